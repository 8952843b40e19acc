"""Example dupl plugin: timm ConvNeXt backbones under the name ``convnext``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dupl-example-backbone")
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
