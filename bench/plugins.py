"""Loading plug-in files by path (the ground floor of discovery: bench.data.catalogue finds datasets with it,
bench.registry methods).

Built-in methods live one per file in the project's ``methods/`` folder and datasets in ``datasets/``
(bench.paths says where those are, in a checkout or an installed package). Those folders are *not* Python
packages: each file is loaded from its path under a private module name (``stbench.methods.<file>``,
``stbench.datasets.<file>``: also their loggers' names; nothing else is called ``stbench``, the suite's own
package being ``bench``). That keeps a top-level ``datasets`` package out of ``sys.path``, where it would
shadow Hugging Face's ``datasets`` for anyone running from the repo root.

Extra folders (your own, outside the repo) are listed in environment variables separated like PATH:
``STBENCH_METHODS_PATH`` for methods, ``STBENCH_DATASETS_PATH`` for datasets.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
from pathlib import Path

from bench.paths import DATASETS_DIR, METHODS_DIR

METHOD_ENTRY_POINTS = "stbench.methods"
DATASET_ENTRY_POINTS = "stbench.datasets"
METHODS_PATH_ENV = "STBENCH_METHODS_PATH"
DATASETS_PATH_ENV = "STBENCH_DATASETS_PATH"
_PLUGIN_PACKAGE = "stbench"


def load_module_from_path(path: Path, kind: str) -> types.ModuleType:
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


def extra_dirs(env: str) -> list[Path]:
    """The folders listed in an environment variable, separated like PATH."""
    return [Path(p) for p in os.environ.get(env, "").split(os.pathsep) if p]


def plugin_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def plugin_paths(builtin: Path, env: str) -> list[Path]:
    """Every plug-in file: the built-in folder's, then those of the folders listed in ``env``."""
    return [f for folder in [builtin, *extra_dirs(env)] for f in plugin_files(folder)]
