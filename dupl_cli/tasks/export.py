"""Export one student of a checkpoint for deployment: safetensors, ONNX, TorchScript, or a folder for
the Hugging Face Hub (``hf``).

Every export is checked before the command succeeds: the exported artefact is run at the sizes
``export.check_sizes`` (chosen to differ from the trace size, so a graph that baked in the trace
size fails) and compared with the PyTorch student; the largest absolute logit difference must
stay within ``export.atol`` (fp32). A card ``<out>.json`` (``best.student1.onnx.json``: one per
exported file) beside the artefact names the inputs
and outputs, normalisation, classes, palette and the check results.

Graph exports (ONNX, TorchScript) take ``image`` (float32 B×3×H×W, RGB in [0,1] normalised with
the card's mean/std; any B, H, W) and return ``logits`` (float32 B×(C+1)×H×W, background first,
computed exactly as ``dupl infer`` does at one scale without flip: stride padding, bilinear
upsampling, crop) and ``mask`` (int64 B×H×W, their argmax); with ``--full`` also
``class_logits`` (B×C), ``cam`` and ``cam_aux`` (raw CAMs of the padded image at the backbone's
stride).

An ``hf`` export is a folder that ``huggingface_hub.upload_folder`` publishes as is: ``model.safetensors``
(the whole student, classifiers included, so CAM pseudo-labels work from it too), ``config.json`` (its
card, with local folders reduced to their names) and ``README.md`` (the model card, ``hf_card``). Any
command that takes a checkpoint reads the folder, or ``hf-hub:org/name`` of its repository.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.core.atomic import atomic_write, atomic_write_text
from dupl_cli.core.errors import UserError
from dupl_cli.core.writable import check_writable
from dupl_cli.models.backbones import build_backbone
from dupl_cli.models.geometry import pad_to_multiple
from dupl_cli.models.hub import require_hub
from dupl_cli.models.segmenter import build_segmenter, is_segmenter
from dupl_cli.models.student import Student
from dupl_cli.predict.choices import ExportFormat, ExportStudent, choose_students
from dupl_cli.runs.card import (
    EXPORT_FORMAT,
    HF_CARD,
    HF_WEIGHTS,
    Card,
    ExportRecord,
    export_card_path,
    read_export_card,
)
from dupl_cli.runs.checkpoint import is_stage2, load_model, versions
from dupl_cli.tasks.hf_card import model_card

SUFFIXES = {
    ExportFormat.safetensors: ".safetensors",
    ExportFormat.onnx: ".onnx",
    ExportFormat.torchscript: ".pt",
    ExportFormat.hf: "-hf",  # a folder
}
HF_README = "README.md"
HF_FILES = (HF_WEIGHTS, HF_CARD, HF_README)
INPUT = {
    "name": "image",
    "dtype": "float32",
    "shape": ["batch", 3, "height", "width"],
    "description": "RGB scaled to [0, 1], then normalised with mean/std (per channel)",
}
OUTPUTS = [
    {
        "name": "logits",
        "dtype": "float32",
        "shape": ["batch", "classes+1", "height", "width"],
        "description": "segmentation logits, background first, at the input size (as dupl infer at one "
        "scale, no flip)",
    },
    {
        "name": "mask",
        "dtype": "int64",
        "shape": ["batch", "height", "width"],
        "description": "argmax of logits: 0 background, k the k-th class of 'classes'",
    },
]
FULL_OUTPUTS = [
    {
        "name": "class_logits",
        "dtype": "float32",
        "shape": ["batch", "classes"],
        "description": "image-level class logits (classifier on the max-pooled final map)",
    },
    {
        "name": "cam",
        "dtype": "float32",
        "shape": ["batch", "classes", "ceil(height/stride)", "ceil(width/stride)"],
        "description": "raw class activation maps of the final map (no ReLU, no normalisation)",
    },
    {
        "name": "cam_aux",
        "dtype": "float32",
        "shape": ["batch", "classes", "ceil(height/stride)", "ceil(width/stride)"],
        "description": "raw class activation maps of the auxiliary map",
    },
]


class InferenceGraph(nn.Module):
    """What graph exports trace: one student's inference path, upsampled, plus its argmax.

    Like ``dupl infer`` (``tta.padded_forward``), the image is zero-padded right and bottom to a
    multiple of the backbone stride, and the logits are upsampled to the padded size and cropped.
    """

    def __init__(self, student: nn.Module, full: bool = False) -> None:
        super().__init__()
        self.student = student
        self.full = full
        self.multiple = int(getattr(student.backbone, "stride", 1) or 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = image.shape[-2], image.shape[-1]
        padded = pad_to_multiple(image, self.multiple)
        if self.full:
            final, aux = self.student.backbone(padded)
            seg = self.student.head(final)
        else:  # the student's own path (a stage-2 head reads the backbone's whole feature pyramid)
            seg = self.student.segment(padded)
        logits = F.interpolate(seg, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits[:, :, :height, :width]
        outputs = (logits, logits.argmax(1))
        if self.full:
            pooled = F.adaptive_max_pool2d(final, 1)
            class_logits = self.student.classifier(pooled).flatten(1)
            cam = F.conv2d(final, self.student.classifier.weight)
            cam_aux = F.conv2d(aux, self.student.aux_classifier.weight)
            outputs = (*outputs, class_logits, cam, cam_aux)
        return outputs


@dataclass
class ExportResult:
    path: Path
    card: Path
    student: int
    checks: list[dict[str, Any]] = field(default_factory=list)  # {"size": [b, h, w], "max_abs_diff": x}
    log: Path | None = None  # the exporter's own log, when it wrote one


@contextlib.contextmanager
def _logs_to_file(path: Path):
    """Route every log record (the ONNX optimiser logs ~170 INFO lines) to ``path`` instead of the
    console; the file is created only if something is logged."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, mode="w", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved
        handler.close()


def choose_student(card: Card, choice: str) -> int:
    """1-based student: explicit ``1``/``2``, or ``best`` = the card's choice by validation."""
    pick = choose_students(choice, card.student, ExportStudent, students=card.students)
    return pick.indices[0] + 1


def inference_state(student: nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """The student's weights needed at inference: backbone + head (+ classifiers with ``full``)."""
    keep = ("backbone.", "head.") + (("classifier.", "aux_classifier.") if full else ())
    return {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items() if k.startswith(keep)}


def default_out(checkpoint: Path, fmt: ExportFormat, student: int) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.student{student}{SUFFIXES[fmt]}")


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(
            f"ONNX export needs the 'onnx' extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'dupl[onnx]'"
        )


def verify(run_exported, reference: nn.Module, sizes, atol: float, what: str) -> list[dict[str, Any]]:
    """Compare every output of ``run_exported`` with ``reference`` at ``sizes``; fail over ``atol``."""
    if len(sizes) < 2:
        raise UserError("export.check_sizes needs at least two sizes (H, W) to check dynamic shapes")
    checks = []
    g = torch.Generator().manual_seed(0)
    # The first size at batch 2, the others at batch 1: batch is dynamic too.
    for x in (torch.randn(2 if i == 0 else 1, 3, h, w, generator=g) for i, (h, w) in enumerate(sizes)):
        with torch.no_grad():
            want = reference(x)
            got = run_exported(x)
        diff = 0.0
        for name, w, o in zip([o["name"] for o in OUTPUTS + FULL_OUTPUTS], want, got, strict=False):
            if tuple(o.shape) != tuple(w.shape):
                raise UserError(
                    f"{what} check failed: output {name} has shape {list(o.shape)}, expected {list(w.shape)}"
                )
            if name != "mask":  # the mask is an argmax of checked logits; ties may flip it
                diff = max(diff, (o.float() - w.float()).abs().max().item())
        checks.append({"size": list(x.shape[:1]) + list(x.shape[2:]), "max_abs_diff": diff})
        if not diff <= atol:
            raise UserError(
                f"{what} check failed at input {list(x.shape)}: max abs logit difference {diff:.3g} > "
                f"export.atol={atol}"
            )
    return checks


def _export_onnx(graph: InferenceGraph, out: Path, trace_size: int, opset: int, names: list[str]) -> None:
    import onnx
    from torch.export import Dim

    example = torch.randn(1, 3, trace_size, trace_size)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # exporter chatter; the result is verified below
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                input_names=["image"],
                output_names=names,
                dynamic_shapes={"image": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model = onnx.load(str(tmp))
        _name_dynamic_dims(model)
        onnx.save(model, str(tmp))

    atomic_write(out, write)


def _name_dynamic_dims(model) -> None:
    """Give the exporter's symbolic dims (s0, s1, ...) the names the card documents."""
    graph = model.graph
    rename = {}
    for dim, name in zip(
        graph.input[0].type.tensor_type.shape.dim, ("batch", None, "height", "width"), strict=True
    ):
        if name and dim.dim_param:
            rename[dim.dim_param] = name
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def _run_onnx(path: Path, names: list[str]):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != ["image"] or outputs != names:
        raise UserError(
            f"ONNX check failed: graph has inputs {inputs} and outputs {outputs}, "
            f"expected ['image'] and {names}"
        )
    return lambda x: [torch.from_numpy(o) for o in session.run(names, {"image": x.numpy()})]


def _export_torchscript(graph: InferenceGraph, out: Path, trace_size: int) -> None:
    example = torch.randn(1, 3, trace_size, trace_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings; the result is verified at other sizes
        traced = torch.jit.trace(graph, example, check_trace=False)
    atomic_write(out, lambda tmp: traced.save(str(tmp)))


def _run_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor):
        with torch.no_grad():
            return list(loaded(x))

    return run


def load_exported_student(path: Path):
    """Rebuild a Student from a safetensors export and its card (``strict``: classifiers only with --full)."""
    card = read_export_card(path)
    if card.export is None or card.export.format != ExportFormat.safetensors:
        raise UserError(f"{card.file}: not a dupl safetensors export card")
    return _rebuild_student(path, card), card


def load_hf_student(folder: Path):
    """Rebuild the Student of an ``hf`` export folder from its ``model.safetensors`` and ``config.json``."""
    card = Card.read(Path(folder) / HF_CARD, EXPORT_FORMAT)
    if card.export is None or card.export.format != ExportFormat.hf:
        raise UserError(f"{card.file}: not the card of a dupl hf export")
    return _rebuild_student(Path(folder) / HF_WEIGHTS, card), card


def _rebuild_student(path: Path, card: Card) -> nn.Module:
    """A Student built from the card's settings, holding the weights of ``path`` (``strict``:
    classifiers only when the card says the export kept them)."""
    from safetensors.torch import load_file

    settings = card.dupl_settings()
    model_settings = settings.model.model_copy(update={"pretrained": "none"})
    if is_stage2(settings):  # a stage-2 segmenter: backbone and head, nothing else
        student = build_segmenter(model_settings, len(card.classes), settings.data.crop_size)
    else:
        backbone = build_backbone(model_settings, settings.data.crop_size)
        student = Student(
            backbone,
            len(card.classes),
            head_channels=model_settings.head_channels,
            head_dilation=model_settings.head_dilation,
        )
    state = load_file(str(path))
    missing, unexpected = student.load_state_dict(state, strict=False)
    allowed = () if card.export.full else ("classifier.", "aux_classifier.")
    missing = [k for k in missing if not k.startswith(allowed)]
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match the card (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    return student.eval()


def export_checkpoint(
    checkpoint: Path,
    export_settings,
    *,
    fmt: ExportFormat,
    student: str = "best",
    out: Path | None = None,
    full: bool = False,
) -> ExportResult:
    """Export one student of ``checkpoint`` in ``fmt``, verify it, and write its card."""
    if fmt == ExportFormat.onnx:
        _require_onnx()
    if fmt == ExportFormat.hf:
        require_hub("dupl export --format hf")
    model, source_card = load_model(checkpoint)
    index = choose_student(source_card, student)
    chosen = model.students[index - 1].eval()
    full = _keeps_classifiers(chosen, full, fmt)
    out = Path(out) if out is not None else default_out(Path(checkpoint), fmt, index)
    if out.suffix == ".json":
        raise UserError(f"{out}: the export path must not end in .json (the card is written there)")

    check_writable(out.parent, "export folder")
    if fmt == ExportFormat.hf:
        _check_hf_folder(out)
    job = _Job(fmt, out, Path(checkpoint), source_card, index, full, chosen, export_settings)
    log = out.with_name(out.name + ".log")
    log.unlink(missing_ok=True)  # a log of an earlier export would describe another file
    try:
        with _logs_to_file(log):
            checks = job.write_and_check()
    except UserError:
        job.remove()  # a failed check must not leave an export that looks usable
        raise
    card = job.card(checks)
    card.write(job.card_file)
    if fmt == ExportFormat.hf:
        atomic_write_text(out / HF_README, str(model_card(card, out.resolve().name)))
    return ExportResult(out, job.card_file, index, checks, log if log.is_file() else None)


def _keeps_classifiers(chosen: nn.Module, full: bool, fmt: ExportFormat) -> bool:
    """``--full``, and an hf folder (the whole student: every command, CAM pseudo-labels too, works
    from it), keep the classifiers; a stage-2 segmenter has none."""
    if not is_segmenter(chosen):
        return full or fmt == ExportFormat.hf
    if full:
        raise UserError("--full exports the classifiers (CAMs): a stage-2 segmenter has none")
    return False


def _check_hf_folder(out: Path) -> None:
    """An hf export goes to a new folder, an empty one, or one holding an earlier hf export: what else
    it held would be published with it. Hidden files (``.git``, ``.gitattributes``) may stay."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (--format hf writes a folder)")
    held = out.iterdir() if out.is_dir() else []
    others = sorted(p.name for p in held if p.name not in HF_FILES and not p.name.startswith("."))
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"{out}: the folder holds other files ({listed}) that upload_folder would publish too; "
            "give a new or empty folder"
        )


@dataclass
class _Job:
    """One export: write the artefact in its format, then check it against the PyTorch student."""

    fmt: ExportFormat
    out: Path
    checkpoint: Path
    source_card: Card
    index: int
    full: bool
    chosen: nn.Module
    settings: Any  # [export]

    @property
    def card_file(self) -> Path:
        return self.out / HF_CARD if self.fmt == ExportFormat.hf else export_card_path(self.out)

    def card(self, checks: list[dict[str, Any]]) -> Card:
        source, settings = self.source_card, self.settings
        return _card(source, self.fmt, self.index, self.full, self.checkpoint, checks, settings)

    def remove(self) -> None:
        """Everything this export wrote (an hf folder: its files, then the folder when left empty)."""
        files = [self.out / f for f in HF_FILES] if self.fmt == ExportFormat.hf else [self.out]
        for path in [*files, self.card_file]:
            path.unlink(missing_ok=True)
        if self.fmt == ExportFormat.hf and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def write_and_check(self) -> list[dict[str, Any]]:
        out, full, opts = self.out, self.full, self.settings
        graph = InferenceGraph(self.chosen, full=full).eval()
        names = [o["name"] for o in OUTPUTS + (FULL_OUTPUTS if full else [])]
        sizes = [tuple(s) for s in opts.check_sizes]
        trace_size = int(self.source_card.settings["data"]["crop_size"])
        if self.fmt in (ExportFormat.safetensors, ExportFormat.hf):
            # Round trip: a Student rebuilt from the file and its card must reproduce the original.
            rebuilt = InferenceGraph(self._write_student(), full=full).eval()
            return verify(rebuilt, graph, sizes, opts.atol, self.fmt.value)
        if self.fmt == ExportFormat.onnx:
            _export_onnx(graph, out, trace_size, opts.opset, names)
            return verify(_run_onnx(out, names), graph, sizes, opts.atol, "ONNX")
        _export_torchscript(graph, out, trace_size)
        return verify(_run_torchscript(out), graph, sizes, opts.atol, "TorchScript")

    def _write_student(self) -> nn.Module:
        """Write the student's weights and a card without checks; the Student rebuilt from them."""
        from safetensors.torch import save_file

        hf = self.fmt == ExportFormat.hf
        weights = self.out / HF_WEIGHTS if hf else self.out
        state = inference_state(self.chosen, self.full)
        atomic_write(weights, lambda tmp: save_file(state, str(tmp), metadata={"format": EXPORT_FORMAT}))
        self.card([]).write(self.card_file)
        return (load_hf_student(self.out) if hf else load_exported_student(self.out))[0]


def portable(value: Any) -> Any:
    """Settings with every absolute path reduced to its last part: an hf folder is made to be published,
    and the folders of the machine it was trained on mean nothing (and tell too much) elsewhere."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def _card(
    source: Card, fmt: ExportFormat, student: int, full: bool, checkpoint: Path, checks, export_settings
) -> Card:
    data = source.settings["data"]
    hf = fmt == ExportFormat.hf
    graph = fmt not in (ExportFormat.safetensors, ExportFormat.hf)
    classifiers = ", classifier.*, aux_classifier.*" if full else ""
    loader = "load_hf_student, or give the folder to any dupl command" if hf else "load_exported_student"
    network = "segmenter.Segmenter" if source.settings["data"].get("pseudo_labels") else "student.Student"
    weights = (
        f"state dict of dupl_cli.models.{network}: backbone.*, head.*{classifiers}; "
        f"load with dupl_cli.tasks.export.{loader}"
    )
    export = ExportRecord(
        format=fmt.value,
        student=student,
        full=full,
        source=f"{Path(checkpoint).parent.name}/{Path(checkpoint).name}" if hf else str(checkpoint),
        mean=data.get("mean"),
        std=data.get("std"),
        check={"atol": export_settings.atol, "results": checks},
        weights=None if graph else weights,
        inputs=[INPUT] if graph else None,
        outputs=OUTPUTS + (FULL_OUTPUTS if full else []) if graph else None,
        opset=export_settings.opset if fmt == ExportFormat.onnx else None,
    )
    return Card(
        classes=source.classes,
        palette=source.palette,
        settings=portable(source.settings) if hf else source.settings,
        student=student,
        students=source.students,
        step=source.step,
        student_rule=source.student_rule,
        selection=source.selection,
        metrics=source.metrics,
        versions=versions(),
        export=export,
        format=EXPORT_FORMAT,
    )
