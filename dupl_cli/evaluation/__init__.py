"""Scoring and pictures: confusion-matrix metrics on the device, class matching by name, palette
masks, overlays, heat maps, the HTML report, and the charts drawn with matplotlib (the ``plots``
extra): the confusion matrix and the training curves.

Belongs here: what turns predictions into numbers and images. May import ``core`` and below; never its
siblings ``crf`` and ``config``.
"""
