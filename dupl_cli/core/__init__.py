"""Leaves every room may use: user-facing errors, the label space, text inputs, atomic writes and
output checks (writability, full disk).

Belongs here: small helpers with no knowledge of models, settings or runs. Imports nothing from dupl_cli
outside ``core``, and no torch.
"""
