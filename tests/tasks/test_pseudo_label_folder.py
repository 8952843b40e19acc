"""``dupl pseudo-label`` writes what stage 2 reads (issue 25): the folder's record and index, confidence
maps on request, and refuses to resume into a folder whose labels were made another way."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.pseudo_labels import CONFIDENCE_DIR, dataset_record, with_pseudo_labels
from dupl_cli.evaluation.visualize import load_mask


def test_the_folder_gets_its_record_index_and_confidence_maps(cli, tmp_path):
    out = tmp_path / "pl"
    r = cli("pseudo-label", cli.run_dir, "--out", out, "--split", "train", "--confidence", "--evaluate")
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "pseudo_labels.json").read_text())
    assert meta["format"] == "dupl-pseudo-labels/1" and meta["split"] == "train" and meta["images"] == 8
    assert meta["dataset"] == dataset_record("demo", cli.data_root) and meta["source"] == "cam"
    assert meta["checkpoint"] == str((cli.run_dir / "best.safetensors").resolve()) and meta["confidence"]
    assert 0 <= meta["metrics"]["miou"] <= 1 and meta["stage"] == 1
    rows = (out / "index.csv").read_text().splitlines()
    assert rows[0] == "id,label,confidence" and len(rows) == 9
    sample_id, label_file, conf_file = rows[1].split(",")
    label = load_mask(out / label_file)
    conf = np.asarray(Image.open(out / conf_file))
    assert conf.shape == label.shape and conf.dtype == np.uint8
    assert (conf[label == IGNORE_INDEX] == 0).all() and conf[label != IGNORE_INDEX].min() > 0
    # stage 2 takes the folder for the same split (here under the preset's name for it, train_aug)
    from dupl_cli.plugins import DATASETS, load

    data = cli.settings.data.model_copy(update={"pseudo_labels": out})
    adapter = load(DATASETS, "demo")(data, data.train_split)
    wrapped = with_pseudo_labels(adapter, data, need_confidence=True)
    assert np.array_equal(wrapped[wrapped.ids.index(sample_id)].mask, label)


def test_confidence_is_the_cam_of_the_label_written(cli, tmp_path):
    from dupl_cli.method.stage2 import label_confidence

    out = tmp_path / "pl"
    assert cli("pseudo-label", cli.run_dir, "--out", out, "--split", "val", "--confidence").exit_code == 0
    assert len(list((out / CONFIDENCE_DIR).glob("*.png"))) == 4
    cams = torch.tensor([[[0.8, 0.1]], [[0.3, 0.2]]])
    assert label_confidence(cams, torch.tensor([[1, 0]]), "cam", torch.tensor([1.0, 1.0])).tolist() == [
        [0.800000011920929, 0.800000011920929]
    ]


def test_resuming_into_a_folder_made_another_way_is_refused(cli, tmp_path):
    out = tmp_path / "pl"
    assert cli("pseudo-label", cli.run_dir, "--out", out, "--split", "train").exit_code == 0
    again = cli("pseudo-label", cli.run_dir, "--out", out, "--split", "train")
    assert again.exit_code == 0 and "resuming: 8 of 8" in again.output
    other = cli("pseudo-label", cli.run_dir, "--out", out, "--split", "train", "--source", "seg")
    assert other.exit_code != 0
    assert "holds pseudo-labels made with another source ('cam' there, 'seg' now)" in " ".join(
        other.output.split()
    )


def test_a_retrained_checkpoint_at_the_same_path_is_another_recipe(cli, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cli.run_dir, run)
    out = tmp_path / "pl"
    assert cli("pseudo-label", run, "--out", out, "--split", "train", "--max-images", "2").exit_code == 0
    weights = run / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # other weights: one byte of a tensor
    again = cli("pseudo-label", run, "--out", out, "--split", "train")
    assert again.exit_code != 0 and "another checkpoint_sha256" in " ".join(again.output.split())
