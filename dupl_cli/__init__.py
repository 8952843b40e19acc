"""dupl: train, evaluate and run DuPL for weakly supervised semantic segmentation.

Kept free of heavy imports so that ``dupl --help`` stays fast.
"""

__version__ = "0.1.0"
