"""The model card (``README.md``) of a ``dupl export --format hf`` folder, written with
huggingface_hub's own card classes (``ModelCard``, ``ModelCardData``, ``EvalResult``).

Its YAML metadata says what the Hub indexes: ``library_name: dupl``, ``pipeline_tag:
image-segmentation``, tags, the dataset, ``base_model`` when the backbone started from known
pretrained weights (timm's, or a hub repository), and a ``model-index`` with the validation mIoU the
checkpoint card records and how it was measured. The text says what the student is and how to use it.
Everything comes from the export's card (``runs.card.Card``); nothing here needs the network.
"""

from __future__ import annotations

from typing import Any

from dupl_cli.models.hub import is_hub_name, split_hub_name
from dupl_cli.runs.card import Card

LIBRARY = "dupl"
PIPELINE = "image-segmentation"
DATASETS = {"voc": ("pascal-voc-2012", "PASCAL VOC 2012"), "coco": ("coco-2014", "MS COCO 2014")}
METRICS = {"seg": "segmentation", "cam": "CAM", "aux_cam": "auxiliary CAM"}  # card metric kinds
TIMM_FAMILIES = ("vit", "timm", "resnet")  # built-in families whose 'timm' weights are timm's hub files


def dataset(card: Card) -> tuple[str, str]:
    """(id for the ``datasets`` metadata, readable name) of the data the student was trained on."""
    adapter = str(card.settings.get("data", {}).get("adapter", "unknown"))
    return DATASETS.get(adapter, (adapter, f"{adapter} (dupl data adapter)"))


def base_model(card: Card) -> str | None:
    """The hub repository of the backbone's starting weights: timm's for ``model.pretrained = timm`` (a
    built-in timm family), the repository of ``hf-hub:org/name``; None for local files or none."""
    model = card.settings.get("model", {})
    pretrained = str(model.get("pretrained", "none"))
    if is_hub_name(pretrained):
        return split_hub_name(pretrained)[0]
    if pretrained != "timm" or model.get("backbone") not in TIMM_FAMILIES:
        return None
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(str(model.get("arch")))
    except Exception:  # a name timm does not know
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def protocol(card: Card) -> dict[str, Any]:
    """How the card's metrics were measured (training-time validation, docs/method.md §11)."""
    data, train = card.settings.get("data", {}), card.settings.get("train", {})
    crop, images = data.get("crop_size"), train.get("val_max_images") or "all"
    return {
        "step": card.step,
        "images": images,
        "input": f"resized to {crop}x{crop}, one scale, no flip, no CRF",
        "checkpoint": card.selection or "not recorded",
        "student_rule": card.rule,
    }


def eval_results(card: Card) -> list:
    """One ``EvalResult`` per validation mIoU of the exported student the card records (percent)."""
    from huggingface_hub import EvalResult

    dataset_id, dataset_name = dataset(card)
    split = card.settings.get("data", {}).get("val_split")
    results = []
    for kind, what in METRICS.items():
        value = card.metrics.get(f"{kind}_s{card.student}")
        if isinstance(value, int | float):
            results.append(EvalResult(
                task_type=PIPELINE, task_name="Weakly supervised semantic segmentation",
                dataset_type=dataset_id, dataset_name=dataset_name, dataset_split=split,
                metric_type="mean_iou", metric_name=f"{what} mIoU (%)", metric_value=round(float(value), 2),
                metric_config="dupl training-time validation", metric_args=protocol(card),
            ))  # fmt: skip
    return results


def card_data(card: Card, name: str):
    """The card's YAML metadata as huggingface_hub's ``ModelCardData``."""
    from huggingface_hub import ModelCardData

    model = card.settings.get("model", {})
    tags = [LIBRARY, "semantic-segmentation", "weakly-supervised-semantic-segmentation", "dupl-export"]
    tags.append(str(model.get("backbone", "")))
    results = eval_results(card)
    return ModelCardData(
        library_name=LIBRARY,
        pipeline_tag=PIPELINE,
        tags=[t for t in tags if t],
        datasets=[dataset(card)[0]],
        base_model=base_model(card),
        model_name=name,
        eval_results=results or None,
    )


def model_card(card: Card, name: str):
    """``huggingface_hub.ModelCard``: the metadata, then the text (what it is, how to use it, the numbers)."""
    from huggingface_hub import ModelCard

    data = card_data(card, name)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_text(card, name)}")


def _text(card: Card, name: str) -> str:
    model, data = card.settings.get("model", {}), card.settings.get("data", {})
    classes = ", ".join(card.classes)
    export = card.export
    source = f"student {export.student if export else card.student} of a {card.students}-student checkpoint"
    return f"""# {name}

A DuPL student (Wu et al., "DuPL: Dual Student with Trustworthy Progressive Learning for Robust Weakly
Supervised Semantic Segmentation", CVPR 2024): semantic segmentation learnt from image-level labels only,
exported with `dupl export --format hf`: {source} ({card.rule}).

- **Network**: backbone `{model.get("backbone")}` / `{model.get("arch")}` (starting weights:
  `{model.get("pretrained")}`), `{model.get("head", "largefov")}` segmentation head
- **Classes** ({len(card.classes)} and background, mask value 0): {classes}
- **Input**: RGB scaled to [0, 1], normalised with mean {data.get("mean")} and std {data.get("std")}; any size
- **Trained**: {card.step if card.step is not None else "?"} steps on {dataset(card)[1]}

## Usage

```bash
pip install "dupl[hub]"
dupl infer hf-hub:ORG/NAME images/ --out masks/   # ORG/NAME: the repository holding this folder
dupl infer path/to/this/folder images/ --out masks/
```

Masks are palette PNGs (pixel value = class index). To start a training from this backbone:
`dupl train --set model.pretrained=hf-hub:ORG/NAME ...`

## Evaluation

{_evaluation(card)}

## Files

- `model.safetensors`: the student's state dict (`backbone.*`, `head.*`, `classifier.*`, `aux_classifier.*`)
- `config.json`: dupl's export card: classes, palette, the settings needed to rebuild the student, how it
  was exported and checked
"""


def _evaluation(card: Card) -> str:
    rows = [
        f"| {what} | {card.metrics[key]:.1f} |"
        for kind, what in METRICS.items()
        if isinstance(card.metrics.get(key := f"{kind}_s{card.student}"), int | float)
    ]
    if not rows:
        return "The checkpoint card records no validation mIoU for this student."
    p = protocol(card)
    split = card.settings.get("data", {}).get("val_split")
    return "\n".join([
        f"| validation on `{split}` | mIoU (%) |", "|---|---|", *rows, "",
        f"Measured during training at step {p['step']} on {p['images']} images of `{split}`, "
        f"{p['input']}; checkpoint: {p['checkpoint']}; student: {p['student_rule']}.",
    ])  # fmt: skip
