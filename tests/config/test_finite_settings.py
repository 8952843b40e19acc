"""Every float setting is finite (issue 26): inf and nan are refused from every source, in one line
naming the key and where the value came from."""

from __future__ import annotations

import pytest

from dupl_cli.config import keys
from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import UserError


def _error(**kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_settings(**{"environ": {}, **kwargs})
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    return message


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("train.lr=inf", "train.lr"),
        ("train.weight_decay=inf", "train.weight_decay"),
        ("train.head_lr_mult=+inf", "train.head_lr_mult"),
        ("method.w_seg=inf", "method.w_seg"),
        ("method.w_ptc=nan", "method.w_ptc"),
        ("crf.bilateral_sxy=inf", "crf.bilateral_sxy"),
        ("crf.cam.gauss_sxy=inf", "crf.cam.gauss_sxy"),
        ("method.anf.eta=inf", "method.anf.eta"),
        ("export.atol=inf", "export.atol"),
        ("train.lr=1e999", "train.lr"),  # a TOML float that overflows to inf
        ("train.betas=[0.9, inf]", "train.betas"),  # inside a tuple
        ("eval.scales=[1.0, inf]", "eval.scales"),
        ("method.tau_high_end=inf", "method.tau_high_end"),  # float | list[float]
        ("method.tau_high_end=[0.5, nan]", "method.tau_high_end"),
        ("data.scale_range=[0.5, inf]", "data.scale_range"),
    ],
)
def test_set_refuses_non_finite_floats(assignment, key):
    message = _error(assignments=[assignment])
    assert message.startswith(f"invalid value for {key} = "), message
    assert "(from --set)" in message and "finite" in message


def test_every_float_field_refuses_inf():
    """No float setting is left out: each one, set to inf, is refused (and names itself)."""
    floats = [key for key, field, section in keys.walk() if not section and "float" in str(field.annotation)]
    assert len(floats) > 40  # the walk found the schema's float fields
    for key in floats:
        message = _error(assignments=[f"{key}=inf"])
        assert message.startswith(f"invalid value for {key} = inf (from --set)"), message


def test_env_refuses_inf():
    message = _error(environ={"DUPL_TRAIN__LR": "inf"})
    assert message.startswith("invalid value for train.lr = 'inf' (from env DUPL_TRAIN__LR)"), message
    message = _error(environ={"DUPL_CRF__BILATERAL_SRGB": "Infinity"})
    assert "crf.bilateral_srgb" in message and "env DUPL_CRF__BILATERAL_SRGB" in message


def test_config_file_and_preset_file_refuse_inf(tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text("[train]\nweight_decay = inf\n")
    message = _error(config_file=config)
    assert message.startswith(f"invalid value for train.weight_decay = inf (from config file {config})")
    preset = tmp_path / "mine.toml"
    preset.write_text('base = "tiny-cpu"\n[method]\nw_reg = nan\n')
    message = _error(preset=str(preset))
    assert message.startswith(f"invalid value for method.w_reg = nan (from {preset})"), message


def test_finite_values_still_load():
    settings = load_settings(
        assignments=["train.lr=1e30", "method.w_seg=0.0", "train.betas=[0.5, 0.9]"], environ={}
    ).settings
    assert settings.train.lr == 1e30 and settings.train.betas == (0.5, 0.9)


def test_cli_prints_one_line(run_cli):
    r = run_cli("config", "show", "--set", "train.lr=inf")
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.strip()]
    assert len(errors) == 1 and "train.lr" in errors[0] and "finite" in errors[0], r.output
