"""Datasets: the adapter protocol and the built-in adapters (VOC, COCO, folder, demo), image and mask
reading, palettes, split checks, the training transforms and loaders.

Belongs here: anything that turns files on disk into samples and batches. May import ``core`` and
``plugins``; never ``models`` (its sibling) or anything above.
"""
