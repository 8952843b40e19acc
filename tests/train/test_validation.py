"""Training-time validation: batched with images of different sizes, sharded across processes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dupl_cli.data.base import shard
from dupl_cli.data.loader import eval_loader
from dupl_cli.train.validation import confusions, resample_each


class VariedSizes:
    """The demo val images cropped to different sizes (VOC's vary too)."""

    def __init__(self, adapter, n: int):
        self.adapter, self.n = adapter, n
        self.classes, self.split, self.has_masks = adapter.classes, adapter.split, adapter.has_masks
        self.ids = adapter.ids[:n]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        sample = self.adapter[i]
        h, w = sample.mask.shape
        h, w = h - 7 * (i % 3), w - 11 * (i % 4)  # 0..14 rows and 0..33 columns fewer
        return dataclasses.replace(sample, image=sample.image[:h, :w], mask=sample.mask[:h, :w])


@pytest.fixture(scope="module")
def setup(tiny_data):
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.plugins import DATASETS, load

    settings = load_settings("tiny-cpu", assignments=[f"data.root={tiny_data}"], environ={}).settings
    adapter = load(DATASETS, "demo")(settings.data, settings.data.val_split)
    torch.manual_seed(0)
    model = build_dual_student(settings.model, len(adapter.classes), settings.data.crop_size).eval()
    return settings, VariedSizes(adapter, len(adapter)), model


def _confusions(settings, adapter, model, batch_size: int) -> dict[str, torch.Tensor]:
    loader = eval_loader(adapter, settings.data, size=settings.data.crop_size, batch_size=batch_size)
    with torch.no_grad():
        return confusions(
            model, loader, num_classes=len(adapter.classes), cam_scales=settings.method.cam_scales,
            cam_threshold=settings.eval.cam_threshold, device="cpu",
        )  # fmt: skip


def test_batched_validation_counts_every_pixel_as_one_image_at_a_time(setup):
    settings, adapter, model = setup
    one = _confusions(settings, adapter, model, 1)
    batched = _confusions(settings, adapter, model, 3)  # mixed sizes in a batch, a short last batch
    labelled = sum(int((adapter[i].mask != 255).sum()) for i in range(len(adapter)))
    for key in one:
        assert int(batched[key].sum()) == int(one[key].sum()) == labelled, key
        assert torch.equal(batched[key], one[key]), key


def test_shards_sum_to_the_whole_split(setup):
    settings, adapter, model = setup
    whole = _confusions(settings, adapter, model, 2)
    parts = [_confusions(settings, shard(adapter, rank, 3), model, 2) for rank in range(3)]
    for key in whole:
        assert torch.equal(sum(part[key] for part in parts), whole[key]), key


@pytest.mark.parametrize("size", [(40, 64), (64, 23), (97, 130)])
def test_resample_each_is_interpolate_per_image(size):
    maps = torch.rand(2, 3, 64, 64)
    sizes = torch.tensor([size, (size[0] // 2 + 1, size[1])])
    canvas = resample_each(maps, sizes, size)
    for b, (h, w) in enumerate(sizes.tolist()):
        want = F.interpolate(maps[b : b + 1], size=(h, w), mode="bilinear", align_corners=False)
        torch.testing.assert_close(canvas[b : b + 1, :, :h, :w], want, atol=1e-5, rtol=0)


def test_one_forward_for_segmentation_and_scale_one_cams_changes_nothing(setup):
    """Validation reuses the student's forward; the separate passes give the same confusions."""
    from dupl_cli.evaluation.metrics import confusion_matrix
    from dupl_cli.method.cam import multiscale_cam
    from dupl_cli.method.thresholds import cam_to_label
    from dupl_cli.train.validation import segment_at

    settings, adapter, model = setup
    n = len(adapter.classes) + 1
    loader = eval_loader(adapter, settings.data, size=settings.data.crop_size, batch_size=2)
    want = {}
    with torch.no_grad():
        for batch in loader:
            masks, sizes = batch["mask"], batch["orig_size"]
            out = tuple(masks.shape[-2:])
            for k, student in enumerate(model.students, start=1):
                seg = segment_at(student, batch["image"], out, sizes).argmax(1)  # its own segment() pass
                cams = multiscale_cam(student, batch["image"], scales=settings.method.cam_scales, flip=True)
                found = {"seg": seg}
                for kind, cam in zip(("cam", "aux_cam"), cams, strict=True):
                    cam = resample_each(cam, sizes, out)
                    found[kind] = cam_to_label(cam, batch["labels"], tau_high=settings.eval.cam_threshold)
                for kind, pred in found.items():
                    key = f"{kind}_s{k}"
                    want[key] = want.get(key, 0) + confusion_matrix(pred, masks, n)
    got = _confusions(settings, adapter, model, 2)
    for key in got:
        assert torch.equal(got[key], want[key]), key
