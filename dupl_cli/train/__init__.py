"""Training: the Accelerate loop around ``method.step``, the optimiser and LR schedule, the
non-finite step guard, compile, progress, training-time validation.

Belongs here: what ``dupl train`` runs step by step. May import ``runs`` and below; never its sibling
``predict``.
"""
