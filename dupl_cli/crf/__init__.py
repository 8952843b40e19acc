"""Dense CRF post-processing: its parameters, the torch backend (a permutohedral lattice), the
pydensecrf backend (a process pool) and the router the prediction commands use.

Belongs here: CRF inference on logits or CAM labels. May import ``core`` and below; never its siblings
``config`` and ``evaluation``.
"""
