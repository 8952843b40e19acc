"""The registry: in-process ``register``, clash policy, cached discovery, lazy loading, listing by pattern."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
from typer.testing import CliRunner

from dupl_cli import plugins
from dupl_cli.cli.app import app
from dupl_cli.core.errors import UserError
from dupl_cli.plugins import BACKBONES, DATASETS, discover, load, register, unregister

runner = CliRunner()


def toy_backbone_factory():
    """A factory building a backbone that keeps the protocol (stride 4, a 2×2 average pool twice)."""
    import torch
    from torch import nn

    from dupl_cli.plugins.backbone import BackboneFeatures

    class Toy(nn.Module):
        out_channels, aux_channels, stride = 8, 3, 4

        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            aux = nn.functional.avg_pool2d(x, 2)
            return BackboneFeatures(final=self.proj(nn.functional.avg_pool2d(aux, 2)), aux=aux)

    def build(arch, *, pretrained="none", img_size=64, aux_layer=-3):
        torch.manual_seed(0)
        return Toy()

    return build


def test_register_then_load_list_and_unregister(registered):
    build = registered("backbone", "toynet", toy_backbone_factory(), dist="my-lab", version="1.2")
    assert discover(BACKBONES)["toynet"].origin == "in-process"
    factory = load(BACKBONES, "toynet")
    assert factory.fn is build and factory.plugin.label == "backbone plugin 'toynet' (my-lab 1.2)"
    assert factory("toy").out_channels == 8

    listed = runner.invoke(app, ["plugins", "list", "toy*", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [
        (r["name"], r["dist"], r["version"], r["origin"], r["status"]) for r in json.loads(listed.stdout)
    ] == [("toynet", "my-lab", "1.2", "in-process", "ok")]

    assert unregister("backbone", "toynet") is build
    assert "toynet" not in discover(BACKBONES)
    with pytest.raises(UserError, match="unknown backbone 'toynet'"):
        load(BACKBONES, "toynet")
    assert unregister("backbone", "toynet") is None


def test_register_as_decorator_and_its_refusals():
    @register(DATASETS, "decorated")
    def build(data_settings, split):
        raise AssertionError("never called")

    try:
        assert discover("dataset")["decorated"].value.endswith(
            ":test_register_as_decorator_and_its_refusals.<locals>.build"
        )
        with pytest.raises(ValueError, match="already registered in-process"):
            register(DATASETS, "decorated", build)
    finally:
        unregister(DATASETS, "decorated")
    for bad in ("", "two words", "a=b"):
        with pytest.raises(ValueError, match="invalid plugin name"):
            register(BACKBONES, bad, build)
    with pytest.raises(ValueError, match="unknown plugin group 'dupl.heads'"):
        register("dupl.heads", "x", build)
    with pytest.raises(TypeError, match="not callable"):
        register(BACKBONES, "x", 42)


def test_builtin_beats_an_in_process_registration(registered):
    impostor = toy_backbone_factory()
    with pytest.warns(UserWarning, match=r"'vit' is declared by both dupl .*\(built-in\)") as caught:
        registered(BACKBONES, "vit", impostor, dist="impostor-lab")
    assert "impostor-lab" in str(caught[0].message)
    from dupl_cli.models.backbones import vit

    assert load(BACKBONES, "vit").fn is vit.build
    rows = [r for r in plugins.list_plugins(["vit"], try_load=False)]
    assert [(r.dist, r.status) for r in rows] == [("dupl", "not loaded"), ("impostor-lab", "shadowed")]
    assert rows[1].error.startswith("name taken by dupl ")


def test_in_process_beats_an_installed_third_party(fake_distribution, registered):
    fake_distribution(
        "dupl-other",
        "3.0",
        {BACKBONES: {"toynet": "dupl_other_toy:build"}},
        {"dupl_other_toy": "def build(*a, **k):\n    raise AssertionError\n"},
    )
    assert discover(BACKBONES)["toynet"].dist == "dupl-other"
    with pytest.warns(UserWarning, match="'toynet' is declared by both my-lab .* and dupl-other 3.0"):
        mine = registered(BACKBONES, "toynet", toy_backbone_factory(), dist="my-lab")
    assert load(BACKBONES, "toynet").fn is mine


def test_entry_points_are_read_once_per_process_until_refresh(fake_distribution, monkeypatch):
    from dupl_cli.plugins import installed

    site = fake_distribution("dupl-early", "1.0", {DATASETS: {"early": "dupl_early:build"}}).parent
    calls = []
    scan = installed.scan
    monkeypatch.setattr(installed, "scan", lambda groups: calls.append(1) or scan(groups))
    for _ in range(3):
        assert "early" in discover(DATASETS)
        load(DATASETS, "folder")
        plugins.list_plugins(try_load=False)
    assert len(calls) == 1

    # Installed after the scan: unseen until refresh().
    late = site / "dupl_late-1.0.dist-info"
    late.mkdir()
    (late / "METADATA").write_text("Metadata-Version: 2.1\nName: dupl-late\nVersion: 1.0\n")
    (late / "entry_points.txt").write_text("[dupl.datasets]\nlate = dupl_late:build\n")
    assert "late" not in discover(DATASETS) and len(calls) == 1
    plugins.refresh()
    assert "late" in discover(DATASETS) and "early" in discover(DATASETS)
    assert len(calls) == 2


def test_discovery_imports_nothing_and_load_imports_only_its_plugin(fake_distribution):
    modules = {
        f"dupl_lazy_{n}": f"import sys\nsys.modules['{n}_imported'] = True\n"
        "def build(*a, **k):\n    return 1\n"
        for n in ("a", "b")
    }
    fake_distribution(
        "dupl-lazy",
        "1.0",
        {DATASETS: {"lazy_a": "dupl_lazy_a:build", "lazy_b": "dupl_lazy_b:build"}},
        modules,
    )
    try:
        assert {"lazy_a", "lazy_b"} <= set(discover(DATASETS))
        plugins.list_plugins(try_load=False)
        assert runner.invoke(app, ["plugins", "list", "--no-load"]).exit_code == 0
        assert "a_imported" not in sys.modules and "b_imported" not in sys.modules
        load(DATASETS, "lazy_a")
        assert "a_imported" in sys.modules and "b_imported" not in sys.modules
    finally:
        sys.modules.pop("a_imported", None)
        sys.modules.pop("b_imported", None)


def test_list_by_shell_wildcards():
    def names(*args):
        result = runner.invoke(app, ["plugins", "list", "--no-load", "--json", *args])
        assert result.exit_code == 0, result.output
        return [r["name"] for r in json.loads(result.stdout)]

    assert names("res*", "v?t") == ["resnet", "vit"]
    assert names("[fv]*", "--kind", "dataset") == ["folder", "voc"]
    assert names("VIT") == ["vit"]  # case-insensitive
    missing = runner.invoke(app, ["plugins", "list", "vi"])
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "no plugin name matches 'vi'" in missing.stderr and "vit" in missing.stderr
    table = runner.invoke(app, ["plugins", "list", "--no-load", "m*"])
    assert table.exit_code == 0 and "mit" in table.stdout and "resnet" not in table.stdout


def test_unknown_name_lists_the_installed_and_suggests():
    with pytest.raises(UserError) as err:
        load(BACKBONES, "vitt")
    message = str(err.value)
    assert "unknown backbone 'vitt'" in message and "did you mean 'vit'" in message and "resnet" in message
    assert "\n" not in message


def test_clash_warning_is_given_once_per_scan(registered):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registered(BACKBONES, "resnet", toy_backbone_factory(), dist="again")
        for _ in range(3):
            discover(BACKBONES)
    assert len([w for w in caught if "'resnet'" in str(w.message)]) == 1
