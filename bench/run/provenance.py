"""Provenance recorded with every run: code version and package versions."""
from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from bench.paths import PROJECT_ROOT

PACKAGES = ("stbench", "torch", "torchvision", "numpy", "pandas", "scikit-learn", "scanpy", "anndata", "mlflow")


@lru_cache(maxsize=1)
def git_commit() -> str:
    if PROJECT_ROOT is None:  # an installed wheel: its version (recorded beside this) names the code
        return "unknown (installed package)"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}-dirty" if dirty and commit != "unknown" else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def tags() -> dict[str, str]:
    return {"git_commit": git_commit(), **{f"version.{k}": v for k, v in package_versions().items()}}
