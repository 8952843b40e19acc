"""The one prediction loop: batches of same-size items -> routes (segmentation or CAM, with TTA; big
images window by window) -> sinks (confusion matrices, masks, overlays, probabilities), with the CRF
pool behind a label router, and the fixed choices of the prediction commands.

Belongs here: how a loaded model turns images into labels. May import ``runs`` and below; never its
sibling ``train``.
"""
