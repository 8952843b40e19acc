"""The label space every layer shares: 0 background, 1..C the classes, ``IGNORE_INDEX`` ignored.

Masks, pseudo-labels (where it means "uncertain") and the losses all use the same id.
"""

IGNORE_INDEX = 255
