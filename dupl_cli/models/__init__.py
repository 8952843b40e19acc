"""Networks: backbones (built-in families registered as plugins), the LargeFOV head, one student and the
dual student, and the geometry that maps backbone maps back onto pixels.

Belongs here: ``nn.Module`` code and pretrained-weight loading (``hf-hub:`` names through the hub
cache). May import ``core`` and ``plugins``; never ``data`` (its sibling) or anything above.
"""
