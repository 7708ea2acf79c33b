"""Where data and caches live, when a dataset may be downloaded, and loading a dataset by name.

Data directory: ``--data-dir`` > environment variable ``STBENCH_DATA`` > ``<user cache>/stbench/data``.
Each downloadable dataset sits in ``<data dir>/<dataset name>/`` in its source repository's layout.

A folder the user named (``--data-dir``, ``STBENCH_DATA``) is theirs: it is read, never written, unless they
ask for a download (``bench data fetch``, ``--download`` on ``run`` and ``reproduce``). The default folder in
the user cache is the suite's own: a run downloads into it what it lacks (``ensure_data``).
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


def data_dir_named_by(cli_value: str | os.PathLike | None = None) -> str | None:
    """How the user named the data folder (``--data-dir`` or ``STBENCH_DATA``, as ``resolve_data_dir``
    reads them); None when it is the default folder in the user cache."""
    if cli_value:
        return "--data-dir"
    if os.environ.get(DATA_ENV):
        return DATA_ENV
    return None


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


def describe_file(name: str, relpath: str) -> str | None:
    """What a manifest file is needed for, from the dataset module's ``describe_file`` (None if unknown)."""
    describe = getattr(get_dataset_module(name), "describe_file", None)
    return describe(relpath) if describe else None


def repair_command(name: str, data_dir: Path) -> str:
    """The command that downloads what a copy of ``name`` in ``data_dir`` lacks (and verifies the rest)."""
    import shlex

    # The default folder needs no option; any other is named, so the command works in any shell.
    where = "" if Path(data_dir) == _user_cache() / "data" else f" --data-dir {shlex.quote(str(data_dir))}"
    return f"python -m bench data fetch {name}{where}"


def _missing_counts(name: str, data_dir: Path) -> tuple[list[Path], list[Path], int, str]:
    """(missing required files, missing optional files, files listed, "k of the n files of the <name>
    manifest are missing from <root> (r required, o optional)")."""
    required, n_listed = missing_files(name, data_dir)
    optional, _ = missing_files(name, data_dir, optional=True)
    count = (f"{len(required) + len(optional)} of the {n_listed} files of the {name} manifest are missing from "
             f"{dataset_root(name, data_dir)} ({len(required)} required, {len(optional)} optional)")
    return required, optional, n_listed, count


def missing_data_message(name: str, data_dir: Path) -> str | None:
    """One line for a copy that lacks a file it cannot do without: the first such file and what it is
    needed for, how many files are missing (required vs optional), and the command that repairs the copy;
    None when nothing required is missing."""
    root = dataset_root(name, data_dir)
    required, optional, n_listed, count = _missing_counts(name, data_dir)
    if not required:
        return None
    command = repair_command(name, data_dir)
    if len(required) + len(optional) == n_listed:
        return (f"no {name} data in {root} (none of the {n_listed} files of its manifest): download it with "
                f"`{command}` (needs internet), or point --data-dir or the {DATA_ENV} environment variable at a "
                f"folder that holds {name}/")
    relpath = required[0].relative_to(root).as_posix()
    role = describe_file(name, relpath)
    needed = f", needed for the {role}" if role else ""
    return f"{required[0]}: file not found{needed}; {count}; repair the copy with `{command}` (needs internet)"


def fetch_dataset(name: str, data_dir: Path, base_url: str | None = None, progress: bool = True,
                  strict: bool = True):
    """Download what the copy of ``name`` in ``data_dir`` lacks (``bench data fetch``; a run that may
    download), every file verified. The files a copy cannot do without come first, so a failure names one
    of them before any optional file (an image). ``strict=False``: a copy that is complete but for optional
    files that could not be downloaded is kept, with a warning, as a partial copy is when nothing is fetched.
    Returns the ``FetchReport`` of both passes; raises DataError (one line) when a file cannot be had."""
    from bench.data.download import DownloadError, FetchReport, fetch

    module = get_dataset_module(name)
    if not is_downloadable(module):
        raise InputError(f"dataset {name!r} is {dataset_origin(module)}, not downloaded")
    root = dataset_root(name, data_dir)
    optional = tuple(getattr(module, "OPTIONAL_FILES", ()))
    log.info("downloading %s into %s", name, root)
    report = FetchReport()
    for wanted in (False, True) if optional else (False,):
        try:
            done = fetch(module, root, base_url=base_url, progress=progress,
                         select=lambda path, wanted=wanted: path.startswith(optional) == wanted)
        except DownloadError as exc:
            message = _download_failed(name, data_dir, exc)
            if wanted and not strict:  # only optional files are missing: the copy runs without them
                log.warning("%s; running on the copy as it is", message)
                break
            raise DataError(message) from exc
        for key in ("downloaded", "already_present", "resumed"):
            getattr(report, key).extend(getattr(done, key))
        report.bytes_downloaded += done.bytes_downloaded
    return report


def _download_failed(name: str, data_dir: Path, exc) -> str:
    """One line for a download that failed: the file and what it is for, why, and what is still missing."""
    root = dataset_root(name, data_dir)
    if exc.path is None:  # the manifest itself is wrong: its own message names file and line
        return f"{name}: {exc}"
    role = describe_file(name, exc.path)
    why = (f"the machine seems offline (no connection could be made: {exc.reason})" if exc.offline
           else exc.reason or str(exc))
    _, _, _, count = _missing_counts(name, data_dir)
    return (f"{root / exc.path}: could not download{f' the {role}' if role else ''}; {why}; {count}; when "
            f"online, repair the copy with `{repair_command(name, data_dir)}`, or point --data-dir or the "
            f"{DATA_ENV} environment variable at a complete copy")


def ensure_data(name: str, cli_value: str | os.PathLike | None = None, download: bool = False,
                no_fetch: bool = False, progress: bool = True) -> Path:
    """Make sure dataset ``name`` can be loaded before a command writes anything; returns the data folder.

    A copy that lacks a file it cannot do without is downloaded only where that is allowed: asked for
    (``download``, the ``--download`` flag), or the default folder in the user cache (unless ``no_fetch``).
    A folder the user named is otherwise only read: the missing file is refused with one line
    (``missing_data_message``). ``download`` also fetches missing optional files (images); without it a
    copy that lacks only those runs as it is, naming once the sections without an image."""
    if download and no_fetch:
        raise InputError("--download and --no-fetch contradict each other: give one of them")
    data_dir = resolve_data_dir(cli_value)
    module = get_dataset_module(name)
    if not is_downloadable(module):
        if download:
            raise InputError(f"--download: dataset {name!r} is {dataset_origin(module)}, not downloaded")
        return data_dir
    required, optional, _, _ = _missing_counts(name, data_dir)
    if not required and not (download and optional):
        return data_dir
    if not (download or (data_dir_named_by(cli_value) is None and not no_fetch)):
        raise DataError(missing_data_message(name, data_dir))
    fetch_dataset(name, data_dir, progress=progress, strict=False)
    return data_dir


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
    data_dir = _data_dir_of(dataset, name)
    return (f"{name}: {len(lacking)} of {len(dataset.sections)} sections have no image in this copy "
            f"({', '.join(lacking)}); they enter no image-based fold. `{repair_command(name, data_dir)}` "
            f"downloads the rest ({len(missing_files(name, data_dir, optional=True)[0])} file(s) missing)")


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
    missing = missing_data_message(name, data_dir)
    if missing:  # a section's counts or spot file is gone: name it rather than load around it
        raise DataError(missing)
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
