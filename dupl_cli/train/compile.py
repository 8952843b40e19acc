"""``train.compile``: the students' backbones through ``torch.compile``, in place.

In place (``nn.Module.compile``): parameter names, checkpoints and resume are those of the eager
model, and DDP wraps the same module. Shapes are static (``dynamic=False``): the CAM scales, the
flip and the strong view give a handful of input shapes, each compiled once, so the recompile limit
is raised to hold them all rather than falling back to eager after the default eight.
"""

from __future__ import annotations

from dupl_cli.core.errors import UserError

SHAPES_PER_STUDENT = 16  # training view, scale views with and without flip, strong view, validation


def compile_students(model, *, mode: str = "default", backend: str = "inductor") -> None:
    """Compile each student's backbone forward (and ``forward_aux``, the phase-A CAM pass) in place."""
    import torch._dynamo
    import torch._dynamo.config as dynamo_config

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(
            f"train.compile_backend={backend!r} is not a torch.compile backend (known: {', '.join(known)})"
        )
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, SHAPES_PER_STUDENT)
    options = {"backend": backend, "dynamic": False}
    if backend == "inductor":
        options["mode"] = mode
    for student in model.students:
        backbone = student.backbone
        backbone.compile(**options)
        if hasattr(backbone, "forward_aux"):
            backbone.forward_aux = torch.compile(backbone.forward_aux, **options)


def compile_from_settings(model, train_settings) -> None:
    """``train.compile`` / ``compile_mode`` / ``compile_backend`` applied to ``model``."""
    if train_settings.compile:
        compile_students(model, mode=train_settings.compile_mode, backend=train_settings.compile_backend)
