"""DuPL itself as plain tensor functions over typed parameters (``method.params``): CAMs, PAR, the
dynamic thresholds, the adaptive noise filter, the strong view, the losses, the schedule and one
training step. docs/method.md is its specification.

Belongs here: the arithmetic of the paper, device-agnostic and free of settings, runs and I/O. May
import ``core``, ``plugins``, ``data`` and ``models`` (geometry); nothing above.
"""
