"""Inference checkpoints: ``<name>.safetensors`` (weights) + ``<name>.json`` (its card, ``runs.card``).
No pickle anywhere. Writes are atomic (``core.atomic``), so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dupl_cli import __version__
from dupl_cli.core.atomic import atomic_write
from dupl_cli.core.errors import UserError
from dupl_cli.models.dual import build_dual_student
from dupl_cli.models.hub import hub_snapshot, is_hub_name
from dupl_cli.models.segmenter import build_segmenter_model
from dupl_cli.runs.card import HF_CARD, HF_WEIGHTS, Card, card_path, read_card
from dupl_cli.runs.run_index import LATEST


def versions() -> dict[str, str]:
    import timm

    return {"dupl": __version__, "torch": torch.__version__, "timm": timm.__version__}


def is_stage2(settings) -> bool:
    """Settings of a stage-2 run: a segmenter trained on the pseudo-labels of ``data.pseudo_labels``."""
    return settings.data.pseudo_labels is not None


def build_network(settings, num_classes: int, students: int = 2, *, pretrained: str | None = None):
    """The network ``settings`` train: DuPL's dual student (``students`` of them), or with
    ``data.pseudo_labels`` the stage-2 ``SegmenterModel``. ``pretrained`` overrides model.pretrained."""
    model_settings = settings.model
    if pretrained is not None:
        model_settings = model_settings.model_copy(update={"pretrained": pretrained})
    if is_stage2(settings):
        return build_segmenter_model(model_settings, num_classes, img_size=settings.data.crop_size)
    return build_dual_student(
        model_settings, num_classes, img_size=settings.data.crop_size, students=students
    )


def save_model(path: Path, model: torch.nn.Module, card: Card) -> Path:
    """Write ``path`` (.safetensors) and its card; the card gets the library versions filled in.

    The card is written once the weights are complete and before they are renamed into place, so a
    failure (a full disk: one line) leaves the previous weights and card, and no temporary file.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    card = card.with_versions(versions())

    def write(tmp: Path) -> None:
        save_file(state, str(tmp), metadata={"format": card.format})
        card.write(card_path(path))

    atomic_write(path, write)
    return path


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, Card]:
    """Rebuild the network of a checkpoint (DualStudent, or a stage-2 SegmenterModel); returns
    ``(model, card)``. Weights never downloaded."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint does not exist")
    card = read_card(path)
    settings = card.dupl_settings()
    try:
        model = build_network(settings, len(card.classes), card.students, pretrained="none")
    except UserError as exc:  # e.g. a model name no installed backbone knows: say whose card it is
        raise UserError(f"{card.file}: cannot build its model: {exc}", exc.exit_code) from None
    try:
        state = load_file(str(path))  # to CPU; the model moves as a whole below
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if card.export is not None:  # an export holds one Student's state: it is the first student here
        state = {f"students.0.{k}": v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: the card's classes or model settings are not the weights'
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise UserError(
            f"{path}: weights do not match its card {card.file} ({len(card.classes)} classes, "
            f"model {settings.model.arch}): {detail[:300]}"
        ) from None
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match the card's model (missing {len(missing)} keys, e.g. "
            f"{missing[:1]}; unexpected {len(unexpected)}, e.g. {unexpected[:1]})"
        )
    return model.to(map_location).eval(), card


def newest_run(runs_root: Path) -> Path | None:
    runs = [
        p
        for p in Path(runs_root).glob("*/")
        if p.name != LATEST  # the link to the newest run, which is listed anyway
        and ((p / "best.safetensors").is_file() or (p / "final.safetensors").is_file())
    ]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def hf_folder(arg: Path | str) -> Path | None:
    """The local folder of a ``dupl export --format hf`` that ``arg`` names: ``hf-hub:org/name[@rev]``
    (the hub cache first, see ``models.hub``) or the folder itself; None for anything else."""
    if is_hub_name(arg):
        return hub_snapshot(str(arg), (HF_WEIGHTS, HF_CARD))
    path = Path(arg).expanduser()
    return path if (path / HF_WEIGHTS).is_file() and (path / HF_CARD).is_file() else None


def resolve_checkpoint(arg: Path | None, settings) -> tuple[Path, str]:
    """The checkpoint to use and how it was chosen: explicit file or run dir (or hf export folder, or
    ``hf-hub:`` name), eval.checkpoint, newest run."""
    how = "given"
    if arg is None and settings.eval.checkpoint is not None:
        arg, how = settings.eval.checkpoint, "from eval.checkpoint"
    if arg is None:
        run = newest_run(settings.train.runs_root)
        if run is None:
            raise UserError(
                f"no checkpoint given and no run with a checkpoint under {settings.train.runs_root}/; "
                "pass CHECKPOINT or RUN_DIR, or set eval.checkpoint"
            )
        arg, how = run, "newest run"
    folder = hf_folder(arg)
    if folder is not None:
        return folder / HF_WEIGHTS, how if folder == Path(arg) else f"{how}, {arg}"
    arg = Path(arg)
    if arg.is_dir():
        for name in ("best.safetensors", "final.safetensors"):
            if (arg / name).is_file():
                return arg / name, how
        raise UserError(f"{arg}: run directory has no best.safetensors or final.safetensors yet")
    if not arg.is_file():
        raise UserError(f"{arg}: checkpoint does not exist")
    return arg, how
