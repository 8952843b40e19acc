"""Backbone and dataset plugins.

A plugin is a factory under a name in a group: ``dupl.backbones`` (``build(arch, *, pretrained,
img_size, aux_layer) -> Backbone``) or ``dupl.datasets`` (``build(data_settings, split) ->
DatasetAdapter``). Built-ins are declared through the same pyproject entry points a third party
uses; ``register`` adds one in-process. ``load(group, name)`` imports only that plugin and
returns a callable that builds the object and holds it to the protocol (``check_backbone``,
``check_dataset``).

Belongs here: the registry, the protocols factories are held to, and the backbone contract
(``plugins.backbone``). May import ``core`` only, and no torch at module level.
"""

from dupl_cli.plugins.installed import Broken
from dupl_cli.plugins.protocol import check_backbone, check_dataset
from dupl_cli.plugins.registry import (
    BACKBONES,
    BUILTIN_DIST,
    DATASETS,
    GROUPS,
    Factory,
    Plugin,
    PluginError,
    PluginInfo,
    broken_distributions,
    discover,
    find,
    list_plugins,
    load,
    matches,
    refresh,
    register,
    unregister,
)

__all__ = [
    "BACKBONES",
    "BUILTIN_DIST",
    "DATASETS",
    "GROUPS",
    "Broken",
    "Factory",
    "Plugin",
    "PluginError",
    "PluginInfo",
    "broken_distributions",
    "check_backbone",
    "check_dataset",
    "discover",
    "find",
    "list_plugins",
    "load",
    "matches",
    "refresh",
    "register",
    "unregister",
]
