"""Training: what ``dupl train`` runs step by step.

``trainer.py`` sets a run up (run directory, data, model, resume) and records its outcome;
``loop.py`` holds ``optimizer_step`` (the one optimiser step: the method's step, backward, the
non-finite guard, optimiser and schedule) and the linear ``train_loop`` that calls the hooks of
``hooks.py`` (log, images, validation, best model, tracker, checkpoint, final model) after each
step; ``state.py`` is where a run stands (``TrainState``, the checkpoint's trainer_state.json).
Beside them: the optimiser and LR schedule, the non-finite step guard, compile, progress,
training-time validation.

Belongs here: what ``dupl train`` runs step by step. May import ``runs`` and below; never its sibling
``predict``.
"""
