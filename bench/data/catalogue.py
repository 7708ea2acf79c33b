"""Discovery of datasets: the built-in ``datasets/`` folder, the folders in ``STBENCH_DATASETS_PATH`` and the
entry-point group ``stbench.datasets``. Each is a module with ``NAME`` and ``load(root) -> Dataset``.

Listing the names (``dataset_names``: ``bench list``, ``--help``) reads the files' source without running
them; loading one (``get_dataset_module``) imports it.
"""
from __future__ import annotations

import ast
import types
from functools import lru_cache
from importlib.metadata import entry_points

from bench.errors import InputError, UnknownNameError
from bench.paths import DATASETS_DIR
from bench.plugins import DATASET_ENTRY_POINTS, DATASETS_PATH_ENV, load_module_from_path, plugin_paths


@lru_cache(maxsize=None)
def dataset_modules() -> dict[str, types.ModuleType]:
    """Every known dataset module by its ``NAME``; each has ``load(root) -> Dataset``."""
    found = {}
    for path in plugin_paths(DATASETS_DIR, DATASETS_PATH_ENV):
        module = load_module_from_path(path, "datasets")
        if hasattr(module, "NAME") and hasattr(module, "load"):
            if module.NAME in found and found[module.NAME] is not module:
                raise InputError(f"two datasets are named {module.NAME!r} ({path} and "
                                   f"{found[module.NAME].__file__})")
            found[module.NAME] = module
    for ep in entry_points(group=DATASET_ENTRY_POINTS):
        module = ep.load()
        found[module.NAME] = module
    return dict(sorted(found.items()))


def get_dataset_module(name: str) -> types.ModuleType:
    modules = dataset_modules()
    if name not in modules:
        raise UnknownNameError(f"unknown dataset {name!r}; valid datasets: {', '.join(modules)}")
    return modules[name]


def dataset_names() -> list[str]:
    """Every known dataset's ``NAME``, read from the plug-in files' source (a file without a literal
    ``NAME`` and a ``def load`` is imported and checked as ``dataset_modules`` does); entry points are
    listed by their names, unloaded."""
    names = set()
    for path in plugin_paths(DATASETS_DIR, DATASETS_PATH_ENV):
        tree = ast.parse(path.read_text())
        assigned = {t.id: stmt.value for stmt in tree.body if isinstance(stmt, ast.Assign)
                    for t in stmt.targets if isinstance(t, ast.Name)}
        has_load = any(isinstance(n, ast.FunctionDef) and n.name == "load" for n in tree.body)
        try:
            name = ast.literal_eval(assigned["NAME"]) if has_load else None
        except (KeyError, ValueError):
            name = None
        if not isinstance(name, str):
            module = load_module_from_path(path, "datasets")
            name = module.NAME if hasattr(module, "NAME") and hasattr(module, "load") else None
        if name:
            names.add(name)
    names.update(ep.name for ep in entry_points(group=DATASET_ENTRY_POINTS))
    return sorted(names)
