"""The callable API the CLI composes: evaluate, pseudo-label, infer, submit and export, each a request
in and a result out.

Belongs here: one job of a command, without argument parsing. May import every room but ``cli``.
"""
