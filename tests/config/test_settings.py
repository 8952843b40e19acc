"""Settings: priority and provenance of every source, nested sections, renamed keys, frozen values, errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dupl_cli.config import presets
from dupl_cli.config.schema import VOC_TAU_END_PER_CLASS, DuplSettings
from dupl_cli.config.sources import load_settings, parse_literal
from dupl_cli.core.errors import UserError


def test_defaults_are_the_release_values():
    s = DuplSettings()
    assert (s.method.tau_low, s.method.tau_high_start, s.method.t_seg, s.method.t_anf) == (
        0.25,
        0.70,
        2000,
        8000,
    )
    assert (s.method.w_ptc, s.method.w_dis, s.method.w_seg, s.method.w_reg) == (0.2, 0.1, 0.2, 0.05)
    a = s.method.anf
    assert (a.gamma, a.eta, a.min_pixels, a.loss_floor, a.iters, a.tol, a.reg) == (
        0.95,
        1.0,
        1000,
        0.1,
        10,
        1e-2,
        5e-4,
    )
    assert s.method.par.dilations == (1, 2, 4, 8, 12, 24) and s.method.par.iters == 10
    assert (s.method.strong.n, s.method.strong.magnitude, s.method.reg.confidence) == (5, 10, 0.9)
    assert (s.train.lr, s.train.head_lr_mult, s.train.weight_decay, s.train.warmup_iters) == (
        6e-5,
        10.0,
        0.01,
        1500,
    )
    assert (s.crf.bilateral_sxy, s.crf.bilateral_srgb, s.crf.bilateral_compat) == (121.0, 5.0, 4.0)
    assert (s.crf.cam.bilateral_sxy, s.crf.cam.tau_high, s.crf.cam.tau_low) == (36.0, 0.70, 0.25)
    assert s.eval.scales == (1.0, 1.25, 1.5)
    assert not any(s.compat.model_dump().values()), "release quirks must be off by default"


def test_bare_settings_ignore_the_environment(monkeypatch):
    monkeypatch.setenv("DUPL_TRAIN__LR", "3.0")
    assert DuplSettings().train.lr == 6e-5  # only load_settings reads the environment
    assert load_settings().settings.train.lr == 3.0


def test_all_sources_and_a_card_in_priority_order(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text(
        'base = "voc-vitb"\n[data]\nadapter = "demo"\n[train]\nlr = 1.0\nbatch_size = 3\nseed = 7\nmax_iters '
        "= 11\n"
    )
    config = tmp_path / "cfg.toml"
    config.write_text(
        "[train]\nlr = 2.0\nbatch_size = 5\nseed = 9\n[crf.cam]\ntau_low = 0.2\n[data.options]\nsize = 48\n"
    )
    env = {
        "DUPL_TRAIN__LR": "3.0",
        "DUPL_TRAIN__BATCH_SIZE": "6",
        "DUPL_METHOD__ANF__GAMMA": "0.8",
        "UNRELATED": "x",
    }
    card_file = tmp_path / "run" / "best.json"
    card = {
        "train": {"lr": 0.5, "batch_size": 2, "seed": 8, "max_iters": 12, "warmup_iters": 13},
        "method": {"anf": {"gamma": 0.7, "eta": 2.0}},
        "data": {"adapter": "demo", "options": {"n_val": 7}},
    }
    r = load_settings(
        str(preset), config, ["train.lr=4.0", "method.par.iters=3"], environ=env, card=(card_file, card)
    )
    t, m = r.settings.train, r.settings.method
    assert (t.lr, t.batch_size, t.seed, t.max_iters, t.warmup_iters, t.eps) == (4.0, 6, 9, 11, 13, 1e-8)
    assert (m.par.iters, m.anf.gamma, m.anf.eta, r.settings.crf.cam.tau_low) == (3, 0.8, 2.0, 0.2)
    assert r.settings.data.options == {"seed": 0, "size": 48, "n_train": 300, "n_val": 7, "generate": False}
    assert m.tau_high_end == VOC_TAU_END_PER_CLASS
    expected = {
        "train.lr": "--set",
        "method.par.iters": "--set",
        "train.batch_size": "env DUPL_TRAIN__BATCH_SIZE",
        "method.anf.gamma": "env DUPL_METHOD__ANF__GAMMA",
        "train.seed": f"config file {config}",
        "crf.cam.tau_low": f"config file {config}",
        "data.options.size": f"config file {config}",
        "train.max_iters": str(preset),
        "data.adapter": str(preset),
        "method.tau_high_end": "preset voc-vitb",
        "train.warmup_iters": f"card {card_file}",
        "method.anf.eta": f"card {card_file}",
        "data.options.n_val": f"card {card_file}",
    }
    assert {key: r.sources.get(key) for key in expected} == expected
    assert "train.eps" not in r.sources and "data.options.seed" not in r.sources  # defaults


def test_loaded_settings_are_frozen():
    s = load_settings("tiny-cpu", environ={}).settings
    for assign in (
        lambda: setattr(s.train, "lr", 1.0),
        lambda: setattr(s.method.anf, "gamma", 0.5),
        lambda: setattr(s.crf.cam, "tau_low", 0.1),
        lambda: setattr(s, "train", s.train),
    ):
        with pytest.raises(ValidationError, match="frozen"):
            assign()
    derived = s.model_copy(update={"train": s.train.model_copy(update={"lr": 1.0})})
    assert derived.train.lr == 1.0 and s.train.lr != 1.0


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("1e-4", 1e-4),
        ("true", True),
        ("[1.0, 0.5]", [1.0, 0.5]),
        ('"a b"', "a b"),
        ("data/voc", "data/voc"),
        ("vit:test_vit", "vit:test_vit"),
    ],
)
def test_set_values_are_toml_literals(text, value):
    assert parse_literal(text) == value


def test_set_array_nested_paths_and_family_arch():
    sets = ["method.cam_scales=[1.0, 0.75]", "model.backbone=resnet:test_resnet", "method.anf.gamma=0.9",
            "method.strong={n = 2, flip = false}", "crf.cam.bilateral_sxy=30"]  # fmt: skip
    r = load_settings(None, None, sets, environ={})
    s = r.settings
    assert s.method.cam_scales == (1.0, 0.75) and s.method.anf.gamma == 0.9 and s.crf.cam.bilateral_sxy == 30
    assert (s.method.strong.n, s.method.strong.flip, s.method.strong.magnitude) == (2, False, 10)
    assert (s.model.backbone, s.model.arch) == ("resnet", "test_resnet")
    assert r.sources["model.arch"] == "--set" and r.sources["method.strong.n"] == "--set"


def test_nested_env_vars_use_pydantic_settings_parsing():
    env = {
        "DUPL_METHOD__ANF__GAMMA": "0.9",
        "dupl_crf__cam__tau_high": "0.6",
        "DUPL_EVAL__SCALES": "[1.0, 2.0]",
        "DUPL_METHOD__STRONG": '{"n": 1}',
        "DUPL_EVAL__STUDENT": "1",
    }
    r = load_settings(environ=env)
    s = r.settings
    assert (s.method.anf.gamma, s.crf.cam.tau_high, s.eval.scales, s.method.strong.n) == (
        0.9,
        0.6,
        (1.0, 2.0),
        1,
    )
    assert s.eval.student == "1"
    assert r.sources["crf.cam.tau_high"] == "env dupl_crf__cam__tau_high"
    assert r.sources["method.strong.n"] == "env DUPL_METHOD__STRONG"


OLD_KEYS = [
    ("method", "anf_gamma", "0.9", "method.anf.gamma"),
    ("crf", "cam_bilateral_sxy", "30.0", "crf.cam.bilateral_sxy"),
    ("method", "par_iters", "2", "method.par.iters"),
    ("method", "strong_n", "2", "method.strong.n"),
    ("method", "reg_confidence", "0.5", "method.reg.confidence"),
    ("data", "demo_size", "64", "data.options.size"),
]


@pytest.mark.parametrize("where", ["--set", "env", "--config", "preset"])
@pytest.mark.parametrize(("section", "key", "value", "new"), OLD_KEYS)
def test_old_flat_keys_point_to_the_new_ones(tmp_path, where, section, key, value, new):
    toml = tmp_path / "old.toml"
    toml.write_text(f"[{section}]\n{key} = {value}\n")
    args = {
        "--set": {"assignments": [f"{section}.{key}={value}"]},
        "env": {"environ": {f"DUPL_{section.upper()}__{key.upper()}": value}},
        "--config": {"config_file": toml},
        "preset": {"preset": str(toml)},
    }[where]
    with pytest.raises(UserError) as info:
        load_settings(**{"environ": {}, **args})
    message = str(info.value)
    assert f"unknown setting {section}.{key} = " in message and f"did you mean {new}" in message
    assert "\n" not in message and info.value.exit_code == 2
    assert {"--set": "(from --set)", "env": "(from env DUPL_", "--config": f"(from config file {toml})",
            "preset": f"(from {toml})"}[where] in message  # fmt: skip


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("train.lrr=1", "unknown setting train.lrr = 1 (from --set); did you mean train.lr?"),
        ("train.lr=abc", "invalid value for train.lr = 'abc' (from --set)"),
        ("train.precision=fp8", "invalid value for train.precision = 'fp8' (from --set)"),
        ("trian.lr=1", "did you mean train?"),
        (
            "method.anff.gamma=1",
            "unknown settings section 'method.anff' (from --set); did you mean method.anf?",
        ),
        (
            "method.anf.gammma=1",
            "unknown setting method.anf.gammma = 1 (from --set); did you mean method.anf.gamma?",
        ),
        (
            "method.anf.gamma=1.5",
            "invalid value for method.anf.gamma = 1.5 (from --set): Input should be less than 1",
        ),
        ("method.anf=3", "method.anf must be a table of settings (from --set), got 3"),
        ("train.lr.x=1", "unknown setting train.lr.x (from --set): train.lr is a single value"),
        ("method.t_anf=10", "method.t_anf (10) must be >= method.t_seg (2000)"),
        ('method.strong.ops=["blur"]', "unknown op 'blur'"),
        ("lr=1", "--set expects section.key=value"),
    ],
)
def test_bad_settings_are_one_line_errors(assignment, expected):
    with pytest.raises(UserError) as info:
        load_settings(None, None, [assignment], environ={})
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"DUPL_TRAIN__BATCH_SIZE": "0"},
            "invalid value for train.batch_size = '0' (from env DUPL_TRAIN__BATCH_SIZE)",
        ),
        ({"DUPL_TRIAN__LR": "1"}, "unknown settings section 'trian' (from env DUPL_TRIAN__LR"),
        (
            {"DUPL_METHOD__ANF__GAMA": "1"},
            "(from env DUPL_METHOD__ANF__GAMA); did you mean method.anf.gamma?",
        ),
        (
            {"DUPL_EVAL__SCALES": "1.0,1.5"},
            "invalid value for eval.scales = '1.0,1.5' (from env DUPL_EVAL__SCALES)",
        ),
    ],
)
def test_bad_env_values_name_the_variable(env, expected):
    with pytest.raises(UserError) as info:
        load_settings(None, None, [], environ=env)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_every_builtin_preset_resolves():
    names = presets.builtin_names()
    assert {"voc-vitb", "voc-vitb21k", "coco-vitb", "voc-r50", "voc-mitb1", "demo", "tiny-cpu"} <= set(names)
    for name in names:
        load_settings(name, environ={})
        assert presets.description(name), f"{name} needs a first-line comment"
    coco = load_settings("coco-vitb", environ={}).settings
    assert (coco.train.max_iters, coco.method.t_seg, coco.method.t_anf, coco.train.batch_size) == (
        80000,
        8000,
        32000,
        8,
    )
    assert coco.method.w_dis == 0.05 and coco.method.tau_high_start == 0.65
    assert load_settings("voc-vitb21k", environ={}).settings.model.arch == "vit_base_patch16_224"
    tiny = load_settings("tiny-cpu", environ={}).settings
    assert (tiny.method.anf.min_pixels, tiny.method.par.iters, tiny.data.options["size"]) == (10, 2, 64)


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


def test_unreadable_config_files_are_one_line_naming_the_file(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# caf\xe9\n[train]\nlr = 1.0\n".encode("latin-1"))
    cases = [
        (latin1, f"{latin1}: config file is not UTF-8 text (byte 0xe9 at offset 5)"),
        (tmp_path, f"{tmp_path}: is a directory, not a config file"),
        (tmp_path / "missing", f"{tmp_path / 'missing'}: config file does not exist"),
    ]
    for path, expected in cases:
        with pytest.raises(UserError) as info:
            load_settings(config_file=path, environ={})
        assert str(info.value) == expected
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_settings(str(latin1), environ={})
    from pathlib import Path

    with pytest.raises(UserError, match="URLs are not supported"):
        load_settings(config_file=Path("https://example.org/cfg.toml"), environ={})


def test_adapter_options_are_validated_by_the_adapter():
    r = load_settings(
        "tiny-cpu", assignments=["data.options.seed=3"], environ={"DUPL_DATA__OPTIONS__N_VAL": "5"}
    )
    assert r.settings.data.options == {
        "seed": 3,
        "size": 64,
        "n_train": 8,
        "n_val": 5,
        "generate": False,
    }  # typed, defaults filled
    assert r.sources["data.options.n_val"] == "env DUPL_DATA__OPTIONS__N_VAL"
    defaults = load_settings(assignments=["data.adapter=demo"], environ={}).settings.data.options
    assert defaults == {"seed": 0, "size": 128, "n_train": 300, "n_val": 60, "generate": False}
    cases = [
        (
            "tiny-cpu",
            "data.options.sizee=3",
            "unknown setting data.options.sizee = 3 (from --set): dataset adapter 'demo' has no option "
            "'sizee' (options: seed, size, n_train, n_val, generate); did you mean data.options.size?",
        ),
        (
            "tiny-cpu",
            "data.options.size=16",
            "invalid value for data.options.size = 16 (from --set): dataset adapter "
            "'demo': Input should be greater than or equal to 32",
        ),
        (
            None,
            "data.options.size=64",
            "unknown setting data.options.size = 64 (from --set): dataset adapter 'voc' takes no options",
        ),
    ]
    for preset, assignment, expected in cases:
        with pytest.raises(UserError) as info:
            load_settings(preset, assignments=[assignment], environ={})
        assert str(info.value) == expected


def test_options_written_for_another_adapter_do_not_reach_the_chosen_one(tmp_path):
    r = load_settings("tiny-cpu", assignments=["data.adapter=folder", f"data.root={tmp_path}"], environ={})
    assert r.settings.data.options == {} and "data.options.size" not in r.sources
    assert "data.options.size (from preset tiny-cpu; written for adapter 'demo')" in r.ignored
    # Options written beside (or above) the adapter that is finally chosen are kept.
    r = load_settings(None, assignments=["data.adapter=demo", "data.options.size=48"], environ={})
    assert r.settings.data.options["size"] == 48 and not r.ignored
    # Options written without an adapter (env, --set) go to whichever adapter is chosen.
    r = load_settings(
        "voc-vitb", assignments=["data.adapter=demo"], environ={"DUPL_DATA__OPTIONS__SIZE": "48"}
    )
    assert r.settings.data.options["size"] == 48 and not r.ignored
    with pytest.raises(UserError, match="'folder' takes no options"):
        load_settings(
            "tiny-cpu", assignments=["data.adapter=folder"], environ={"DUPL_DATA__OPTIONS__SIZE": "48"}
        )


def test_a_builtin_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from dupl_cli.config.presets import preset_text

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # `make demo` leaves such folders about
    text, origin = preset_text("demo")
    assert origin == "preset demo" and "[model]" in text
    meant = r"demo: is a directory, not a preset file; for the built-in preset write --preset demo"
    with pytest.raises(UserError, match=meant):
        preset_text("./demo")
    (tmp_path / "mine").mkdir()
    found = r"unknown preset 'mine' .*; \./mine is a directory, not a preset file"
    with pytest.raises(UserError, match=found):
        preset_text("mine")
    (tmp_path / "own").write_text("[train]\nmax_iters = 3\n", encoding="utf-8")
    assert preset_text("own") == ("[train]\nmax_iters = 3\n", "own")  # a file without .toml still reads


def test_the_release_preset_is_voc_vitb_with_every_compat_switch_on():
    from dupl_cli.config.keys import flatten
    from dupl_cli.config.schema import CompatSettings

    release = load_settings("voc-vitb-release", environ={}).settings  # the run behind the paper's table
    fixed = load_settings("voc-vitb", environ={}).settings
    assert all(getattr(release.compat, name) is True for name in CompatSettings.model_fields)
    assert not any(getattr(fixed.compat, name) for name in CompatSettings.model_fields)
    ours, theirs = flatten(release.model_dump(mode="json")), flatten(fixed.model_dump(mode="json"))
    differ = {key for key in ours if ours[key] != theirs[key]}
    assert differ == {f"compat.{name}" for name in CompatSettings.model_fields} | {"train.precision"}
    assert release.train.precision == "no"  # the release trains in float32
