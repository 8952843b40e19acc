"""Same-size images go through the model together (eval.batch_size): every item exactly once, one size
per forward, the labels of one image at a time, and labels by max indices equal to argmax."""

import numpy as np
import pytest
import torch

from dupl_cli.crf.params import CrfParams
from dupl_cli.predict.loop import (
    Item,
    PredictOptions,
    ProgressBar,
    Runtime,
    Sink,
    labels_of,
    predict,
    size_batches,
)
from dupl_cli.predict.routes import CamRoute, SegRoute
from dupl_cli.predict.tta import TTAConfig

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIZES = [(20, 27), (20, 27), (16, 16), (20, 27), (16, 16), (20, 27), (20, 27), (9, 31), (20, 27), (16, 16)]


def _items():
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yield Item(i, f"img{i}", image, labels=np.array([1.0, 0.0, 1.0], np.float32))


def test_size_batches_hold_one_size_and_yield_every_item_once():
    items = list(enumerate(_items()))
    batches = list(size_batches(items, 3, alone=lambda size: size == (9, 31)))
    assert sorted(n for batch in batches for n, _ in batch) == list(range(len(SIZES)))
    assert all(len({item.size for _, item in batch}) == 1 and len(batch) <= 3 for batch in batches)
    assert [[n for n, _ in b] for b in batches] == [[0, 1, 3], [7], [5, 6, 8], [2, 4, 9]]
    assert [[n for n, _ in b] for b in size_batches(items, 1, alone=lambda s: False)] == [
        [n] for n in range(10)
    ]


def test_size_batches_hold_few_items():
    """All sizes differ: nothing fills a bucket, so the oldest goes once four batches' worth wait."""
    pulled = []

    def numbered():
        for n in range(30):
            pulled.append(n)
            yield n, Item(n, str(n), np.zeros((1 + n, 2, 3), np.uint8))

    order = []
    for batch in size_batches(numbered(), 2, alone=lambda s: False):
        assert len(batch) == 1 and len(pulled) - len(order) <= 4 * 2 + 1
        order.append(batch[0][0])
    assert order == list(range(30))


class Labels(Sink):
    def __init__(self):
        self.labels, self.outputs = {}, {}

    def output(self, item, route, output):
        assert output.shape[-2:] == item.size
        self.outputs[item.key] = output.clone()

    def label(self, item, route, label):
        assert item.key not in self.labels
        self.labels[item.key] = np.asarray(label)


def _run(route, batch_size):
    sink = Labels()
    options = PredictOptions(MEAN, STD, batch_size=batch_size)
    with torch.no_grad(), ProgressBar("test", len(SIZES), enabled=False) as bar:
        predict(_items(), [route], [sink], Runtime(torch.device("cpu")), options, bar)
    return sink


def _seg_route(calls):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def fn(x):
        calls.append(tuple(x.shape))
        return conv(x)

    return SegRoute(fn, TTAConfig(), 1, CrfParams())


def test_batched_segmentation_equals_one_image_at_a_time():
    one_calls, batch_calls = [], []
    one = _run(_seg_route(one_calls), batch_size=1)
    batched = _run(_seg_route(batch_calls), batch_size=4)
    assert len(one_calls) == 10 and sorted(c[0] for c in batch_calls) == [1, 2, 3, 4]
    assert one.labels.keys() == batched.labels.keys() == set(range(10))
    for key, label in one.labels.items():
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(batched.labels[key], label)
        np.testing.assert_array_equal(label, one.outputs[key].argmax(0).numpy())
        torch.testing.assert_close(batched.outputs[key], one.outputs[key])


def test_batched_cam_labels_equal_one_image_at_a_time():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    route = CamRoute(lambda x: conv(x).sigmoid(), CrfParams(), (0.7, 0.25), tau_high=0.6, tau_low=0.3)
    one, batched = _run(route, 1), _run(route, 4)
    for key, label in one.labels.items():
        np.testing.assert_array_equal(batched.labels[key], label)
    assert {255, 0} <= set(np.unique(np.concatenate([v.ravel() for v in one.labels.values()])))


@pytest.mark.parametrize("shape", [(5, 64, 64), (21, 17, 13), (3, 1, 1)])
def test_labels_of_is_argmax_with_first_maximum_on_ties(shape):
    scores = torch.randint(0, 3, shape).float()  # many ties
    assert torch.equal(labels_of(scores, 0), scores.argmax(0).to(torch.uint8))
    batch = scores[None].expand(2, *shape)
    assert torch.equal(labels_of(batch), batch.argmax(1).to(torch.uint8))
