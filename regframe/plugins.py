"""Discovery of the packages that hold methods, data modules and callbacks.

The core never names the Lightning glue packages: they (and any third-party package) declare
themselves under the ``regframe.plugins`` entry-point group in their ``pyproject.toml``, e.g.
``data_modules = "data_modules"``. Importing every module of each package lets short
``class_path`` names resolve and checkpoints of any method load.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "regframe.plugins"
CORE_PACKAGES = ("regframe.methods",)


def plugin_packages() -> list[str]:
    """Package names to import: the core's methods, then every registered plugin package."""
    return [*CORE_PACKAGES, *sorted(ep.value for ep in entry_points(group=ENTRY_POINT_GROUP))]


def import_plugins() -> None:
    """Import every module of every plugin package (idempotent)."""
    for package in plugin_packages():
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__):
            importlib.import_module(f"{package}.{info.name}")
