"""Sliding-window inference (eval.mode): windows and their count map, equality with the whole image for a
model whose receptive field fits a window, memory bounded by a window band, the auto switch, progress."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dupl_cli.core.errors import UserError
from dupl_cli.crf.params import CrfParams
from dupl_cli.predict.loop import Item, PredictOptions, ProgressBar, Runtime, Sink, predict, to_batch
from dupl_cli.predict.routes import SegRoute
from dupl_cli.predict.slide import SlideConfig, count_map, slide_predict, window_count, window_starts
from dupl_cli.predict.tta import TTAConfig, tta_logits

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def pixelwise_model(classes: int = 4) -> torch.nn.Module:
    """Receptive field of one pixel: any window sees what the whole image sees at that pixel."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, classes, 1)
    ).eval()


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def normalise(windows: torch.Tensor) -> torch.Tensor:
    return to_batch(windows, MEAN, STD, "cpu")


def whole_logits(model, img: np.ndarray, tta: TTAConfig) -> torch.Tensor:
    with torch.no_grad():
        return tta_logits(model, to_batch([img], MEAN, STD, "cpu"), tta)[0]


@pytest.mark.parametrize(
    ("n", "crop", "stride"),
    [(100, 32, 20), (96, 32, 32), (33, 32, 21), (20, 32, 21), (32, 32, 1), (101, 50, 49)],
)
def test_windows_and_count_map_cover_every_pixel(n, crop, stride):
    starts = window_starts(n, crop, stride)
    assert starts[0] == 0 and min(n, starts[-1] + crop) == n  # the last window is flush with the edge
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    counts = count_map((n, n + 7), crop, stride)
    expected = torch.zeros(n, n + 7, dtype=torch.int32)
    for y in window_starts(n, crop, stride):
        for x in window_starts(n + 7, crop, stride):
            expected[y : y + crop, x : x + crop] += 1
    assert torch.equal(counts, expected)
    assert int(counts.min()) >= 1


@pytest.mark.parametrize(
    "tta",
    [
        TTAConfig(),
        TTAConfig(scales=(1.0,), flip=True, flip_merge="sum"),
        TTAConfig(scales=(1.0,), flip=True, flip_merge="max"),
    ],
    ids=["plain", "flip-sum", "flip-max"],
)
def test_slide_equals_whole_when_the_receptive_field_fits_a_window(tta):
    model, img = pixelwise_model(), image(70, 101)
    slide = SlideConfig("slide", crop=32, stride=20)
    result = slide_predict(model, img, tta, slide, normalise, batch_size=3, keep_logits=True)
    whole = whole_logits(model, img, tta)
    torch.testing.assert_close(result.logits, whole, rtol=1e-5, atol=1e-5)
    assert torch.equal(result.labels, whole.argmax(0).to(torch.uint8))
    alone = slide_predict(model, img, tta, slide, normalise, batch_size=1)  # windows one at a time
    assert alone.logits is None and torch.equal(alone.labels, result.labels)


def test_every_window_reaches_the_sum_once():
    """A model answering 1 everywhere: summed windows divided by the count map give exactly 1."""

    def ones(x):
        return torch.ones(x.shape[0], 2, *x.shape[-2:])

    result = slide_predict(
        ones, image(45, 77), TTAConfig(), SlideConfig("slide", 16, 10), normalise, keep_logits=True
    )
    assert torch.equal(result.logits, torch.ones(2, 45, 77))


class LargestTensor(TorchDispatchMode):
    """The largest tensor any operation creates (elements), and the model inputs' shapes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest(img: np.ndarray, slide: SlideConfig, tta: TTAConfig, seen: list) -> int:
    model = pixelwise_model(classes=5)

    def fn(x):
        seen.append(tuple(x.shape))
        return model(x)

    pixels = torch.from_numpy(img)  # made before counting: the decoded image is the input, not working memory
    with LargestTensor() as mode, torch.no_grad():
        slide_predict(fn, pixels.numpy(), tta, slide, normalise, batch_size=4)
    return mode.largest


def test_working_memory_does_not_grow_with_the_image():
    slide, tta = SlideConfig("slide", crop=32, stride=24), TTAConfig(scales=(1.0, 1.5), flip=True)
    seen: list = []
    small = _largest(image(100, 104), slide, tta, seen)  # 4 windows a row: full batches
    tall = _largest(image(400, 104), slide, tta, seen)  # 4x the pixels
    assert tall == small
    # Only whole windows (times the TTA scale, with the flip) ever reach the model.
    assert {s[-2:] for s in seen} == {(32, 32), (48, 48)}
    assert max(s[0] for s in seen) == 8  # 4 windows (batch_size) and their flips
    # A 4x wider image adds only to the band of window rows (5 classes x 32 rows x W float32, here
    # below a window batch's activations): the largest tensor stays the same.
    wide = _largest(image(100, 416), slide, tta, seen)
    assert wide == small and 5 * 32 * 416 < small
    # The whole-image path, for contrast, allocates in proportion to the pixels.
    with LargestTensor() as mode:
        whole_logits(pixelwise_model(5), image(400, 104), tta)
    assert mode.largest >= 400 * 104 * 5


def test_auto_slides_above_the_threshold_only():
    auto = SlideConfig("auto", crop=16, stride=12, above=40 * 40)
    assert not auto.applies((40, 40)) and auto.applies((40, 41)) and auto.applies((1, 1601))
    assert SlideConfig("slide").applies((2, 2)) and not SlideConfig("whole").applies((10_000, 10_000))
    seen = []
    model = pixelwise_model()

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        return model(x)

    route = SegRoute(fn, TTAConfig(), 1, CrfParams(), auto)
    items = [Item(0, "small", image(40, 40)), Item(1, "big", image(40, 41, seed=1))]
    labels = _predict(items, route)
    assert seen[0] == (40, 40) and set(seen[1:]) == {(16, 16)}
    assert len(seen) - 1 == window_count((40, 41), auto) == 3 * 4  # one window per forward (batch_size 1)
    for item in items:
        expected = whole_logits(model, item.image, TTAConfig()).argmax(0).numpy()
        np.testing.assert_array_equal(labels[item.key], expected)
    assert not SegRoute(fn, TTAConfig(resize=32), 1, CrfParams(), auto).slides((100, 100))


class Labels(Sink):
    def __init__(self):
        self.labels = {}

    def label(self, item, route, label):
        self.labels[item.key] = np.asarray(label)


def _predict(items, route, batch_size=1):
    sink = Labels()
    with torch.no_grad(), ProgressBar("test", len(items), enabled=False) as bar:
        predict(
            items,
            [route],
            [sink],
            Runtime(torch.device("cpu")),
            PredictOptions(MEAN, STD, batch_size=batch_size),
            bar,
        )
    return sink.labels


def test_stride_and_settings():
    ev = SimpleNamespace(mode="auto", slide_crop=0, slide_stride=0, slide_above=10)
    cfg = SlideConfig.from_settings(ev, crop_size=448)
    assert (cfg.crop, cfg.step, cfg.above) == (448, 298, 10) and "every 298 px" in cfg.describe()
    with pytest.raises(UserError, match="slide_stride = 50 is above the window side 40"):
        SlideConfig.from_settings(SimpleNamespace(**{**vars(ev), "slide_crop": 40, "slide_stride": 50}), 448)


def test_a_long_image_gets_its_own_progress_line():
    with ProgressBar("infer", 1, enabled=True) as bar:
        with bar.detail("big.jpg: 4 windows", 4, after_s=0.0) as advance:
            advance(1)
            (line,) = [t for t in bar._bar.tasks if t.description.startswith("big.jpg")]
            assert line.visible and line.completed == 1
        with bar.detail("quick.jpg", 4, after_s=60.0) as advance:
            advance(4)
            assert not [t for t in bar._bar.tasks if t.description == "quick.jpg"][0].visible
        assert [t.description for t in bar._bar.tasks] == ["infer"]  # each line goes when its image is done
