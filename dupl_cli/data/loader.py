"""Training and evaluation loaders over any DatasetAdapter.

Each sample's random view is drawn from a generator seeded by (seed, epoch, position) chosen in
the main process by ``SeededSampler``, so a run is reproducible whatever the number of workers.
With a foreign sampler (e.g. a distributed one yielding plain indices) each worker falls back to
its own generator seeded from the DataLoader's per-worker seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from torchvision.transforms.v2 import functional as F

from dupl_cli.core.errors import DataError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.transforms import WeakView, normalize, to_tensor


class SeededSampler(Sampler):
    """A fresh permutation every epoch; yields (index, per-sample seed) pairs."""

    def __init__(self, indices: Sequence[int], seed: int, shuffle: bool = True):
        self.indices = list(indices)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.indices)) if self.shuffle else np.arange(len(self.indices))
        seeds = rng.integers(0, 2**62, len(self.indices))
        self.epoch += 1  # the next pass is a new epoch even if nobody calls set_epoch
        for pos, s in zip(order.tolist(), seeds.tolist(), strict=False):
            yield self.indices[pos], s


class WeakViewDataset(Dataset):
    """Weak views of the adapter's images. ``views=2`` (method.diff_aug): a second independent view
    of the same image, drawn from the same generator after the first, so the first view is the one a
    one-view dataset gives; each view's ``affine`` (``transforms.ViewSample``) comes with it.
    ``gt_masks`` (train.label_quality): each view's ground truth too, through the same geometry
    (``gt_mask``, ``gt_mask2``; 255 outside the image and for an image without a mask); the views
    are the same either way."""

    def __init__(
        self,
        adapter,
        data_settings,
        seed: int,
        indices: Sequence[int] | None = None,
        *,
        views: int = 1,
        gt_masks: bool = False,
    ):
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, not {views}")
        self.adapter = adapter
        self.view = WeakView(data_settings)
        self.indices = list(range(len(adapter))) if indices is None else list(indices)
        self.seed = seed
        self.views = views
        self.gt_masks = gt_masks
        self._fallback: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _generator(self, key) -> tuple[int, torch.Generator]:
        if isinstance(key, tuple):  # from SeededSampler: (adapter index, seed)
            return key[0], torch.Generator().manual_seed(int(key[1]))
        if self._fallback is None:
            info = get_worker_info()
            self._fallback = torch.Generator().manual_seed(info.seed if info else self.seed)
        return self.indices[int(key)], self._fallback

    def __getitem__(self, key) -> dict:
        index, gen = self._generator(key)
        sample = self.adapter[index]
        first, truth = self._view(sample, gen)
        labels = torch.from_numpy(sample.labels)
        item = {"image": first.image, "labels": labels, "img_box": first.img_box, "id": sample.id}
        if truth is not None:
            item["gt_mask"] = truth
        if self.views == 2:
            second, truth2 = self._view(sample, gen)
            item |= {"image2": second.image, "img_box2": second.img_box}
            item |= {"affine": first.affine, "affine2": second.affine}
            if truth2 is not None:
                item["gt_mask2"] = truth2
        return item

    def _view(self, sample, gen: torch.Generator):
        """One weak view, with its ground truth when ``gt_masks`` (else None)."""
        if not self.gt_masks:
            return self.view.sample(sample.image, gen), None
        mask = sample.mask
        if mask is None:  # an image without a mask counts nowhere
            mask = np.full(sample.image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        view, (truth,) = self.view.sample_with_maps(sample.image, gen, (mask, IGNORE_INDEX))
        return view, truth


def collate_train(items: list[dict]) -> dict:
    """Stack, and count the batch's largest number of present classes on the host ("max_present"):
    the step packs its PAR channels by it without reading the labels back from the device."""
    batch = default_collate(items)
    batch["max_present"] = int((batch["labels"] > 0).sum(1).max()) if len(items) else 0
    return batch


def _worker_init(worker_id: int) -> None:
    # numpy/random in user plugins: tie them to the loader's per-worker torch seed too
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def train_loader(
    adapter,
    data_settings,
    batch_size: int,
    *,
    seed: int,
    num_workers: int | None = None,
    drop_last: bool = True,
    sampler: Sampler | None = None,
    indices: Sequence[int] | None = None,
    views: int = 1,
    gt_masks: bool = False,
) -> DataLoader:
    """Weak-view batches {image B×3×S×S, labels B×C, img_box B×4, id, max_present}. Iterate it once per epoch.

    ``indices``: the adapter indices to use (e.g. the good ones from ``verify.check_split``).
    ``views=2``: each image's second weak view too (image2, img_box2) and both views' affines (affine,
    affine2, B×4 float32: ``transforms.ViewSample``), for ``method.diff_aug``. ``gt_masks``: each
    view's ground truth too (gt_mask[, gt_mask2] B×S×S uint8), for ``train.label_quality``.
    """
    dataset = WeakViewDataset(adapter, data_settings, seed, indices, views=views, gt_masks=gt_masks)
    return seeded_loader(
        dataset, adapter, data_settings, batch_size, seed=seed, num_workers=num_workers,
        drop_last=drop_last, sampler=sampler, collate_fn=collate_train,
    )  # fmt: skip


def seeded_loader(
    dataset,
    adapter,
    data_settings,
    batch_size: int,
    *,
    seed: int,
    num_workers: int | None = None,
    drop_last: bool = True,
    sampler: Sampler | None = None,
    collate_fn=default_collate,
) -> DataLoader:
    """The training DataLoader over ``dataset`` (a ``WeakViewDataset``): a ``SeededSampler`` over its
    indices unless ``sampler`` is given, ``data.num_workers`` persistent workers, pinned on CUDA."""
    if len(dataset) < (batch_size if drop_last else 1):
        raise DataError(
            f"{getattr(adapter, 'source', adapter.split)}: split {adapter.split!r} has {len(dataset)} usable "
            f"images, fewer than one batch of {batch_size}"
        )
    workers = data_settings.num_workers if num_workers is None else num_workers
    if sampler is None:
        sampler = SeededSampler(dataset.indices, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
        prefetch_factor=4 if workers > 0 else None,
    )


class EvalDataset(Dataset):
    def __init__(self, adapter, data_settings, size: int | None, require_masks: bool):
        self.adapter, self.size, self.require_masks = adapter, size, require_masks
        self.mean, self.std = tuple(data_settings.mean), tuple(data_settings.std)
        if require_masks and not adapter.has_masks:
            raise DataError(
                f"{getattr(adapter, 'source', adapter.split)}: split {adapter.split!r} has no masks; "
                "evaluation needs pixel masks"
            )

    def __len__(self) -> int:
        return len(self.adapter)

    def __getitem__(self, i: int) -> dict:
        sample = self.adapter[i]
        image = to_tensor(sample.image)
        h, w = image.shape[1:]
        if self.size is not None:
            image = F.resize(
                image, [self.size, self.size], interpolation=F.InterpolationMode.BILINEAR, antialias=True
            )
        if sample.mask is None:
            if self.require_masks:
                raise DataError(f"{self.adapter.path_of(i)}: no mask for id {sample.id!r}")
            mask = torch.full((h, w), IGNORE_INDEX, dtype=torch.int64)
        else:
            mask = torch.from_numpy(sample.mask).long()
        return {
            "image": normalize(image.float().div_(255.0), self.mean, self.std),
            "mask": mask,
            "labels": torch.from_numpy(sample.labels),
            "id": sample.id,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }


def collate_eval(items: list[dict]) -> dict:
    """Stack; masks of different sizes are padded with 255 (ignore) — crop with ``orig_size``."""
    hmax = max(int(it["mask"].shape[0]) for it in items)
    wmax = max(int(it["mask"].shape[1]) for it in items)
    masks = torch.full((len(items), hmax, wmax), IGNORE_INDEX, dtype=torch.int64)
    for k, it in enumerate(items):
        masks[k, : it["mask"].shape[0], : it["mask"].shape[1]] = it["mask"]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": masks,
        "labels": torch.stack([it["labels"] for it in items]),
        "id": [it["id"] for it in items],
        "orig_size": torch.stack([it["orig_size"] for it in items]),
    }


def eval_loader(
    adapter,
    data_settings,
    *,
    size: int | None = 448,
    batch_size: int = 1,
    num_workers: int | None = None,
    require_masks: bool = True,
) -> DataLoader:
    """Batches {image B×3×size×size (native when size is None: batch 1), mask B×H×W, labels, id,
    orig_size}."""
    if size is None and batch_size != 1:
        raise DataError("eval_loader: native-size images need batch_size 1")
    workers = data_settings.num_workers if num_workers is None else num_workers
    return DataLoader(
        EvalDataset(adapter, data_settings, size, require_masks),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_eval,
        persistent_workers=False,
    )
