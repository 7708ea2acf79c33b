"""Discovery of methods and datasets.

Built-in methods live one per file in the project's ``methods/`` folder and datasets in ``datasets/``.
Those folders are *not* Python packages: each file is loaded from its path under a private module
name (``stbench_plugins.methods.<file>``). That keeps a top-level ``datasets`` package out of
``sys.path``, where it would shadow Hugging Face's ``datasets`` for anyone running from the repo root.

Extra method folders (your own, outside the repo) are listed in the environment variable
``STBENCH_METHODS_PATH`` (separated like PATH), and extra dataset folders in ``STBENCH_DATASETS_PATH``
(each file a module with ``NAME`` and ``load(root)``). Separately installed packages add methods through
the entry-point group ``stbench.methods`` (each entry point names a ``Method`` subclass) and datasets
through ``stbench.datasets`` (each names a module with ``NAME`` and ``load(root)``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
METHODS_DIR = PROJECT_ROOT / "methods"
DATASETS_DIR = PROJECT_ROOT / "datasets"
METHOD_ENTRY_POINTS = "stbench.methods"
DATASET_ENTRY_POINTS = "stbench.datasets"
METHODS_PATH_ENV = "STBENCH_METHODS_PATH"
DATASETS_PATH_ENV = "STBENCH_DATASETS_PATH"
_PLUGIN_PACKAGE = "stbench_plugins"


class UnknownNameError(KeyError):
    """A method, dataset or protocol name the suite does not know; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _load_module_from_path(path: Path, kind: str) -> types.ModuleType:
    # Files from different folders may share a stem; the folder's hash keeps their module names apart.
    # (hashlib, not hash(): the name must be the same in every process, for pickling.)
    folder = "" if path.parent in (METHODS_DIR, DATASETS_DIR) else \
        "_" + hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:8]
    name = f"{_PLUGIN_PACKAGE}.{kind}.{path.stem}{folder}"
    if name in sys.modules:
        return sys.modules[name]
    # Register empty parent packages so the plug-in modules are importable (and picklable) by name.
    for parent in (_PLUGIN_PACKAGE, f"{_PLUGIN_PACKAGE}.{kind}"):
        if parent not in sys.modules:
            pkg = types.ModuleType(parent)
            pkg.__path__ = []
            sys.modules[parent] = pkg
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _is_method_class(obj) -> bool:
    """A subclass of ``bench.method.Method``, recognised by its class hierarchy: the registry sits below every
    other module of the suite (the data layer finds dataset plug-ins through it), so it does not import
    ``bench.method``."""
    return isinstance(obj, type) and any(base.__module__ == "bench.method" and base.__qualname__ == "Method"
                                         for base in obj.__mro__)


def _extra_dirs(env: str) -> list[Path]:
    """The folders listed in an environment variable, separated like PATH."""
    return [Path(p) for p in os.environ.get(env, "").split(os.pathsep) if p]


def _plugin_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def clear_caches() -> None:
    """Forget discovered plug-ins (after changing STBENCH_METHODS_PATH, STBENCH_DATASETS_PATH or installing
    a package)."""
    method_classes.cache_clear()
    dataset_modules.cache_clear()


@lru_cache(maxsize=None)
def method_classes() -> dict[str, type]:
    """Every known method by its registry name (``Method.name``)."""
    found: dict[str, type] = {}

    def add(cls, origin: str):
        if cls.name in found and found[cls.name] is not cls:
            raise RuntimeError(f"two methods are named {cls.name!r} ({origin} and {found[cls.name].__module__})")
        found[cls.name] = cls

    for path in [f for folder in [METHODS_DIR, *_extra_dirs(METHODS_PATH_ENV)] for f in _plugin_files(folder)]:
        module = _load_module_from_path(path, "methods")
        for obj in vars(module).values():
            if (_is_method_class(obj) and obj.__qualname__ != "Method"
                    and obj.__module__ == module.__name__ and getattr(obj, "name", None)):
                add(obj, str(path))
    for ep in entry_points(group=METHOD_ENTRY_POINTS):
        cls = ep.load()
        if not _is_method_class(cls):
            raise TypeError(f"entry point {ep.name!r} in group {METHOD_ENTRY_POINTS} is not a Method subclass")
        add(cls, f"entry point {ep.value}")
    return dict(sorted(found.items()))


def get_method_class(name: str) -> type:
    classes = method_classes()
    if name not in classes:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(classes)}")
    return classes[name]


@lru_cache(maxsize=None)
def dataset_modules() -> dict[str, types.ModuleType]:
    """Every known dataset module by its ``NAME``; each has ``load(root) -> Dataset``."""
    found = {}
    for path in [f for folder in [DATASETS_DIR, *_extra_dirs(DATASETS_PATH_ENV)] for f in _plugin_files(folder)]:
        module = _load_module_from_path(path, "datasets")
        if hasattr(module, "NAME") and hasattr(module, "load"):
            if module.NAME in found and found[module.NAME] is not module:
                raise RuntimeError(f"two datasets are named {module.NAME!r} ({path} and "
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
