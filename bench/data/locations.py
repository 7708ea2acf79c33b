"""Where data and caches live, and loading a dataset by name.

Data directory: ``--data-dir`` > environment variable ``STBENCH_DATA`` > ``<user cache>/stbench/data``.
Each downloadable dataset sits in ``<data dir>/<dataset name>/`` in its source repository's layout.
Patch cache: ``--cache-dir`` > ``STBENCH_CACHE`` > ``<user cache>/stbench/cache``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from bench.data.catalogue import get_dataset_module
from bench.data.dataset import DataError, Dataset
from bench.errors import InputError

log = logging.getLogger(__name__)
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


def missing_files(name: str, data_dir: Path, optional: bool = False) -> tuple[list[Path], int]:
    """The files the dataset's manifest lists that are not there, and how many it lists.

    ``optional=False``: the files a copy cannot do without; ``True``: those it may lack (the module's
    ``OPTIONAL_FILES`` path prefixes, e.g. her2st's images)."""
    from bench.data.download import read_manifest

    module = get_dataset_module(name)
    if not is_downloadable(module):
        return [], 0
    root = dataset_root(name, data_dir)
    prefixes = tuple(getattr(module, "OPTIONAL_FILES", ()))
    entries = read_manifest(module.MANIFEST)
    chosen = [root / e.path for e in entries if e.path.startswith(prefixes) == optional]
    return [p for p in chosen if not p.is_file()], len(entries)


def data_present(name: str, data_dir: Path) -> bool:
    """Every file the dataset cannot do without is there (an interrupted download leaves folders behind, so a
    folder alone proves nothing; checksums are verified by the downloader, not on every run). A copy without
    some optional files (images) is used as it is: see ``missing_images_note``."""
    return not missing_files(name, data_dir)[0]


def matches_manifest(name: str, data_dir: Path) -> bool:
    """Every file the dataset's manifest lists is there and is the file it lists (SHA-256, else git blob id),
    except optional files that are absent (``OPTIONAL_FILES``: a partial copy without some images): the
    published files, unchanged since the download (False for datasets without a manifest)."""
    from bench.data.download import file_matches, read_manifest

    module = get_dataset_module(name)
    if not is_downloadable(module):
        return False
    root = dataset_root(name, data_dir)
    optional = tuple(getattr(module, "OPTIONAL_FILES", ()))
    try:
        return all(file_matches(root / e.path, e) if (root / e.path).exists() or not e.path.startswith(optional)
                   else True for e in read_manifest(module.MANIFEST))
    except OSError:
        return False


def loader_options(module) -> dict:
    """The options a dataset module's ``load`` takes (keyword parameters after the root), by name."""
    import inspect

    params = list(inspect.signature(module.load).parameters.values())[1:]
    return {p.name: p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _convert(param, text: str, name: str, dataset: str):
    """A command-line value as the loader's parameter wants it, from its annotation (or default's type)."""
    annotation = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
    default = param.default
    if text.strip().lower() == "none" and (default is None or "None" in annotation):
        return None
    kinds = [k for k in ("bool", "int", "float") if k in annotation.replace("|", " ").split()]
    if not kinds and default is not None and not isinstance(default, str):
        kinds = [type(default).__name__]
    try:
        if "bool" in kinds:
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise InputError(text)
            return text.lower() in ("true", "yes", "1")
        if "int" in kinds:
            return int(text)
        if "float" in kinds:
            return float(text)
    except ValueError:
        raise InputError(f"data option {name}={text!r} of dataset {dataset!r}: expected a {kinds[0]} "
                         f"(parameter {name}: {annotation or type(default).__name__})") from None
    if not annotation and default is None and "," in text:  # a list of names, e.g. HEST's ids
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def parse_data_options(module, options: dict | None, dataset: str | None = None) -> dict:
    """``--data-option KEY=VALUE`` strings -> the keyword arguments of the module's ``load``; an unknown
    name is refused with the list of valid ones."""
    dataset = dataset or getattr(module, "NAME", "?")
    valid = loader_options(module)
    converted = {}
    for name, value in (options or {}).items():
        if name not in valid:
            listed = ", ".join(valid) if valid else "none (it takes no options)"
            raise InputError(f"unknown data option {name!r} for dataset {dataset!r}; valid options: {listed}")
        converted[name] = _convert(valid[name], value, name, dataset) if isinstance(value, str) else value
    return converted


def missing_images_note(dataset: Dataset, name: str) -> str | None:
    """One sentence naming the sections of a downloadable dataset that have no image here, and how to get
    them; None when every section has its image."""
    lacking = dataset.expression_only_sections()
    module = get_dataset_module(name)
    if not lacking or not is_downloadable(module):
        return None
    return (f"{name}: {len(lacking)} of {len(dataset.sections)} sections have no image in this copy "
            f"({', '.join(lacking)}); they enter no image-based fold. `python -m bench data fetch {name}` "
            f"downloads the rest ({len(missing_files(name, _data_dir_of(dataset, name), optional=True)[0])} "
            f"file(s) missing)")


def _data_dir_of(dataset: Dataset, name: str) -> Path:
    return Path(dataset.attrs.get("data_dir", "."))


_told: set[str] = set()  # data folders whose missing images were already reported by this process


def load_dataset(name: str, data_dir: Path, options: dict | None = None, tell_missing: bool = True) -> Dataset:
    """Load a dataset with its loader's ``options`` (``--data-option`` strings or values); missing data
    gets one sentence naming the folder or file and how to fix it.

    A copy that lacks only optional files (images) loads, and the sections without an image are named once
    per process (``tell_missing``)."""
    module = get_dataset_module(name)
    kwargs = parse_data_options(module, options, name)
    if not is_downloadable(module):
        # The user's own data (h5ad, visium, hest, cscc) sits in <data dir>/<name>/; generated data needs no folder.
        if getattr(module, "USER_DATA", False) and data_dir is not None:
            return module.load(dataset_root(name, data_dir), **kwargs)
        return module.load(None, **kwargs)
    root = dataset_root(name, data_dir)
    missing, n_listed = missing_files(name, data_dir)
    optional_missing, _ = missing_files(name, data_dir, optional=True)
    fix = (f"run `python -m bench data fetch {name}` (needs internet), or point --data-dir or the {DATA_ENV} "
           f"environment variable at a folder that holds {name}/")
    if len(missing) + len(optional_missing) == n_listed and n_listed:
        raise DataError(f"no {name} data in {root}: {fix}")
    if missing:  # a section's counts or spot file is gone: name it rather than load around it
        raise DataError(f"{missing[0]}: file not found ({len(missing)} of the {n_listed} {name} files are "
                        f"missing from {root}); {fix}")
    dataset = module.load(root, **kwargs)
    dataset.attrs.setdefault("data_dir", str(data_dir))
    if tell_missing and str(root) not in _told:
        note = missing_images_note(dataset, name)
        if note:
            log.warning("%s", note)
        _told.add(str(root))
    return dataset


def dataset_origin(module) -> str:
    """Where a dataset's files come from, as ``bench list`` says it."""
    if is_downloadable(module):
        return "downloadable"
    if getattr(module, "USER_DATA", False):
        return "your files (<data dir>/<name>/)"
    return "generated"


def fetch_dataset(name: str, data_dir: Path, base_url: str | None = None, progress: bool = True):
    """Download (or finish downloading) a dataset into ``<data dir>/<name>``; returns the download report."""
    from bench.data.download import DownloadError, fetch

    module = get_dataset_module(name)
    if not is_downloadable(module):
        raise InputError(f"dataset {name!r} is {dataset_origin(module)}, not downloaded")
    root = dataset_root(name, data_dir)
    log.info("downloading %s into %s", name, root)
    try:
        return fetch(module, root, base_url=base_url, progress=progress)
    except DownloadError as exc:
        # The download error already says how to point at an existing copy (--data-dir, STBENCH_DATA).
        raise DataError(f"no complete {name} data in {root}; {exc}") from exc
