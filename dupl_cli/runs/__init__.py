"""Run directories and what they hold: creation and locking, ``run.json`` and the run index, the
resumable Accelerate checkpoints, the inference checkpoint and its card, ``compare`` across runs and
the import of release checkpoints as runs.

Belongs here: reading and writing a run's files. May import ``config``, ``evaluation``, ``crf``,
``method`` and below; never ``predict``, ``train`` or anything above.
"""
