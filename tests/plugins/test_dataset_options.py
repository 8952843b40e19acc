"""A third-party dataset adapter declares its ``[data.options]`` with a pydantic model and gets them
validated."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import UserError

OPTIONS_DATASET = """
from pydantic import BaseModel, ConfigDict, Field

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    radius: float = Field(2.5, gt=0, description="Radius of the drawn discs")
    colours: list[str] = Field(["red"], description="Colours drawn")

def build(data_settings, split):
    raise AssertionError("not built in these tests")

build.options_model = Options
"""


@pytest.fixture
def discs(fake_distribution):
    fake_distribution(
        "dupl-discs", "1.0", {"dupl.datasets": {"discs": "dupl_discs:build"}}, {"dupl_discs": OPTIONS_DATASET}
    )


def test_plugin_options_are_typed_defaulted_and_checked(discs):
    r = load_settings(assignments=["data.adapter=discs"], environ={"DUPL_DATA__OPTIONS__RADIUS": "4"})
    assert r.settings.data.options == {"radius": 4.0, "colours": ["red"]}
    assert r.sources["data.options.radius"] == "env DUPL_DATA__OPTIONS__RADIUS"
    with pytest.raises(UserError) as info:
        load_settings(assignments=["data.adapter=discs", "data.options.radios=1"], environ={})
    assert str(info.value) == (
        "unknown setting data.options.radios = 1 (from --set): dataset adapter 'discs' has no option "
        "'radios' (options: radius, colours); did you mean data.options.radius?"
    )
    with pytest.raises(
        UserError, match=r"data.options.radius = -1 \(from --set\): dataset adapter 'discs': "
    ):
        load_settings(assignments=["data.adapter=discs", "data.options.radius=-1"], environ={})


def test_config_show_explains_plugin_options(discs, tmp_path):
    cfg = tmp_path / "discs.toml"
    cfg.write_text('[data]\nadapter = "discs"\n[data.options]\ncolours = ["blue", "green"]\n')
    result = CliRunner().invoke(app, ["config", "show", "--config", str(cfg), "--explain"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index(f'data.options.colours = ["blue", "green"]  (config file {cfg})')
    assert lines[at + 1] == "    Colours drawn"
    assert "data.options.radius = 2.5  (default)" in lines


def test_in_process_registered_adapter_declares_options_too(registered):
    from pydantic import BaseModel, ConfigDict

    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        depth: int = 3

    def build(data_settings, split):
        raise AssertionError("not built")

    build.options_model = Opts
    registered("dataset", "deep", build)
    r = load_settings(assignments=["data.adapter=deep", "data.options.depth=5"], environ={})
    assert r.settings.data.options == {"depth": 5}
    with pytest.raises(UserError, match="dataset adapter 'deep' has no option 'width'"):
        load_settings(assignments=["data.adapter=deep", "data.options.width=5"], environ={})
