"""Where data and caches live, and loading a dataset by name.

Data directory: ``--data-dir`` > environment variable ``STBENCH_DATA`` > ``<user cache>/stbench/data``.
Each downloadable dataset sits in ``<data dir>/<dataset name>/`` in its source repository's layout.
Patch cache: ``--cache-dir`` > ``STBENCH_CACHE`` > ``<user cache>/stbench/cache``.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.data.dataset import DataError, Dataset
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


def missing_files(name: str, data_dir: Path) -> tuple[list[Path], int]:
    """The files the dataset's manifest lists that are not there, and how many it lists."""
    from bench.data.download import read_manifest

    module = get_dataset_module(name)
    if not is_downloadable(module):
        return [], 0
    root = dataset_root(name, data_dir)
    listed = [root / rel for rel, _ in read_manifest(module.MANIFEST)]
    return [p for p in listed if not p.is_file()], len(listed)


def data_present(name: str, data_dir: Path) -> bool:
    """Every file the dataset's manifest lists is there (an interrupted download leaves folders behind,
    so a folder alone proves nothing; checksums are verified by the downloader, not on every run)."""
    return not missing_files(name, data_dir)[0]


def load_dataset(name: str, data_dir: Path) -> Dataset:
    """Load a dataset; missing data gets one sentence naming the folder or file and how to fix it."""
    module = get_dataset_module(name)
    if not is_downloadable(module):
        # The user's own data (h5ad, visium, hest, cscc) sits in <data dir>/<name>/; generated data needs no folder.
        if getattr(module, "USER_DATA", False) and data_dir is not None:
            return module.load(dataset_root(name, data_dir))
        return module.load(None)
    root = dataset_root(name, data_dir)
    missing, n_listed = missing_files(name, data_dir)
    fix = (f"run `python -m bench data fetch {name}` (needs internet), or point --data-dir or the {DATA_ENV} "
           f"environment variable at a folder that holds {name}/")
    if len(missing) == n_listed and n_listed:
        raise DataError(f"no {name} data in {root}: {fix}")
    if missing:  # a section's counts, spot file or image is gone: name it rather than load around it
        raise DataError(f"{missing[0]}: file not found ({len(missing)} of the {n_listed} {name} files are "
                        f"missing from {root}); {fix}")
    return module.load(root)
