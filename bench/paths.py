"""Where the suite's own files are: the built-in methods, datasets and report templates.

In a checkout (and an editable install) they are the design's top-level folders ``methods/``, ``datasets/``
and ``reports/`` beside ``bench/``. A wheel or sdist install maps the same folders into the package, as
``bench/builtin/{methods,datasets,reports}`` (see ``[tool.setuptools]`` in pyproject.toml), so that nothing
named ``datasets`` sits at the top of ``site-packages``, where it would shadow Hugging Face's package.
The built-in plug-in folders are never imported as packages either way: bench.plugins loads each file by path.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_INSTALLED = PACKAGE_DIR / "builtin"
# The checkout's root when running from one (None for an installed package: there is no project folder).
PROJECT_ROOT: Path | None = None if _INSTALLED.is_dir() else PACKAGE_DIR.parent


def builtin_folder(name: str) -> Path:
    """``methods``, ``datasets`` or ``reports``: the folder of the suite's own files of that kind."""
    return (_INSTALLED if PROJECT_ROOT is None else PROJECT_ROOT) / name


METHODS_DIR = builtin_folder("methods")
DATASETS_DIR = builtin_folder("datasets")
REPORTS_DIR = builtin_folder("reports")
