"""Settings: priority of the five sources, --set literal parsing, one-line errors, presets."""

from __future__ import annotations

import pytest

from dupl_cli.config import presets
from dupl_cli.config.schema import VOC_TAU_END_PER_CLASS, DuplSettings
from dupl_cli.config.sources import load_settings, parse_literal
from dupl_cli.errors import UserError


def test_defaults_are_the_release_values():
    s = DuplSettings()
    assert (s.method.tau_low, s.method.tau_high_start, s.method.t_seg, s.method.t_anf) == (0.25, 0.70, 2000, 8000)
    assert (s.method.w_ptc, s.method.w_dis, s.method.w_seg, s.method.w_reg) == (0.2, 0.1, 0.2, 0.05)
    assert (s.method.anf_gamma, s.method.anf_eta, s.method.anf_min_pixels, s.method.anf_loss_floor) == (0.95, 1.0, 1000, 0.1)
    assert (s.method.anf_iters, s.method.anf_tol, s.method.anf_reg) == (10, 1e-2, 5e-4)
    assert s.method.par_dilations == (1, 2, 4, 8, 12, 24) and s.method.par_iters == 10
    assert (s.train.lr, s.train.head_lr_mult, s.train.weight_decay, s.train.warmup_iters) == (6e-5, 10.0, 0.01, 1500)
    assert (s.crf.bilateral_sxy, s.crf.bilateral_srgb, s.crf.bilateral_compat) == (121.0, 5.0, 4.0)
    assert s.eval.scales == (1.0, 1.25, 1.5)
    assert not any(s.compat.model_dump().values()), "release quirks must be off by default"


def test_all_five_sources_in_priority_order(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text('base = "voc-vitb"\n[train]\nlr = 1.0\nbatch_size = 3\nseed = 7\nmax_iters = 11\n')
    config = tmp_path / "cfg.toml"
    config.write_text("[train]\nlr = 2.0\nbatch_size = 5\nseed = 9\n")
    env = {"DUPL_TRAIN__LR": "3.0", "DUPL_TRAIN__BATCH_SIZE": "6", "UNRELATED": "x"}
    r = load_settings(str(preset), config, ["train.lr=4.0"], environ=env)
    t = r.settings.train
    assert (t.lr, t.batch_size, t.seed, t.max_iters, t.warmup_iters) == (4.0, 6, 9, 11, 1500)
    assert r.sources["train.lr"] == "--set"
    assert r.sources["train.batch_size"] == "env DUPL_TRAIN__BATCH_SIZE"
    assert r.sources["train.seed"] == f"config file {config}"
    assert r.sources["train.max_iters"] == str(preset)
    assert r.sources["method.tau_high_end"] == "preset voc-vitb"
    assert "train.warmup_iters" not in r.sources  # default
    assert r.settings.method.tau_high_end == VOC_TAU_END_PER_CLASS


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("1e-4", 1e-4), ("true", True), ("[1.0, 0.5]", [1.0, 0.5]), ('"a b"', "a b"), ("data/voc", "data/voc"), ("vit:test_vit", "vit:test_vit")],
)
def test_set_values_are_toml_literals(text, value):
    assert parse_literal(text) == value


def test_set_array_and_family_arch():
    r = load_settings(None, None, ["method.cam_scales=[1.0, 0.75]", "model.backbone=resnet:test_resnet"], environ={})
    assert r.settings.method.cam_scales == (1.0, 0.75)
    assert (r.settings.model.backbone, r.settings.model.arch) == ("resnet", "test_resnet")


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("train.lrr=1", "unknown setting train.lrr = 1 (from --set); did you mean train.lr?"),
        ("train.lr=abc", "invalid value for train.lr = 'abc' (from --set)"),
        ("train.precision=fp8", "invalid value for train.precision = 'fp8' (from --set)"),
        ("trian.lr=1", "did you mean train?"),
        ("method.t_anf=10", "method.t_anf (10) must be >= method.t_seg (2000)"),
        ("method.strong_ops=[\"blur\"]", "unknown op 'blur'"),
    ],
)
def test_bad_settings_are_one_line_errors(assignment, expected):
    with pytest.raises(UserError) as info:
        load_settings(None, None, [assignment], environ={})
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert info.value.exit_code == 2


def test_bad_env_value_names_the_variable():
    with pytest.raises(UserError, match="DUPL_TRAIN__BATCH_SIZE"):
        load_settings(None, None, [], environ={"DUPL_TRAIN__BATCH_SIZE": "0"})


def test_every_builtin_preset_resolves():
    names = presets.builtin_names()
    assert {"voc-vitb", "voc-vitb21k", "coco-vitb", "voc-r50", "voc-mitb1", "demo", "tiny-cpu"} <= set(names)
    for name in names:
        load_settings(name, environ={})
        assert presets.description(name), f"{name} needs a first-line comment"
    coco = load_settings("coco-vitb", environ={}).settings
    assert (coco.train.max_iters, coco.method.t_seg, coco.method.t_anf, coco.train.batch_size) == (80000, 8000, 32000, 8)
    assert coco.method.w_dis == 0.05 and coco.method.tau_high_start == 0.65
    assert load_settings("voc-vitb21k", environ={}).settings.model.arch == "vit_base_patch16_224"


def test_preset_base_cycle_and_missing(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(f'base = "{b}"\n')
    b.write_text(f'base = "{a}"\n')
    with pytest.raises(UserError, match="circular"):
        load_settings(str(a), environ={})
    with pytest.raises(UserError, match="does not exist"):
        load_settings(str(tmp_path / "none.toml"), environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_settings(str(bad), environ={})
