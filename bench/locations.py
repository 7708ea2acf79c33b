"""Where data and caches live, and loading a dataset by name.

Data directory: ``--data-dir`` > environment variable ``STBENCH_DATA`` > ``<user cache>/stbench/data``.
Each downloadable dataset sits in ``<data dir>/<dataset name>/`` in its source repository's layout.
Patch cache: ``--cache-dir`` > ``STBENCH_CACHE`` > ``<user cache>/stbench/cache``.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.data import DataError, Dataset
from bench.registry import get_dataset_module

DATA_ENV = "STBENCH_DATA"
CACHE_ENV = "STBENCH_CACHE"


def _user_cache() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("stbench", appauthor=False))


def resolve_data_dir(cli_value: str | os.PathLike | None = None) -> Path:
    if cli_value:
        return Path(cli_value).expanduser().resolve()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return _user_cache() / "data"


def resolve_cache_dir(cli_value: str | os.PathLike | None = None) -> Path:
    if cli_value:
        return Path(cli_value).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    return _user_cache() / "cache"


def is_downloadable(module) -> bool:
    return hasattr(module, "MANIFEST")


def dataset_root(name: str, data_dir: Path) -> Path:
    return Path(data_dir) / name


def data_present(name: str, data_dir: Path) -> bool:
    """Every file the dataset's manifest lists is there (an interrupted download leaves folders behind,
    so a folder alone proves nothing; checksums are verified by the downloader, not on every run)."""
    from bench.download import read_manifest

    module = get_dataset_module(name)
    if not is_downloadable(module):
        return True
    root = dataset_root(name, data_dir)
    return all((root / rel).is_file() for rel, _ in read_manifest(module.MANIFEST))


def load_dataset(name: str, data_dir: Path) -> Dataset:
    """Load a dataset; a missing download gets one sentence naming the folder and how to fix it."""
    module = get_dataset_module(name)
    if not is_downloadable(module):
        return module.load(None)
    root = dataset_root(name, data_dir)
    if not data_present(name, data_dir):
        raise DataError(
            f"no {name} data in {root}: run `python -m bench data fetch {name}` (needs internet), or point "
            f"--data-dir or the {DATA_ENV} environment variable at a folder that holds {name}/")
    return module.load(root)
