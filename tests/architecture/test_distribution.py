"""What an installed stbench holds, and that discovery really found the built-in plug-ins.

(CI also builds the wheel, installs it into a fresh virtual environment outside the checkout and runs
``stbench list`` and a tiny synthetic run from a temporary folder: see .ci/run.)"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

import bench
from bench.cli import main
from bench.paths import DATASETS_DIR, METHODS_DIR, REPORTS_DIR
from bench.registry import dataset_names, method_catalogue, method_classes

# The methods the suite ships; a new built-in method is added here on purpose.
BUILTIN_METHODS = {"bleep", "depth-oracle", "hist2st", "histogene", "linear-probe", "mclstexp", "mean",
                   "spatial-oracle", "st-net", "thitogene"}


def test_discovery_found_every_builtin_method_and_dataset():
    """If discovery broke, every per-method test would be parametrised over nothing; this fails instead."""
    listed = method_catalogue()
    assert BUILTIN_METHODS <= set(listed), sorted(BUILTIN_METHODS - set(listed))
    files = {p.resolve() for p in METHODS_DIR.glob("*.py")}
    assert {Path(info.origin).resolve() for info in listed.values()} >= files
    assert set(method_classes()) == set(listed)  # importing agrees with reading the source
    assert {"her2st", "synthetic", "cscc", "hest", "h5ad", "visium"} <= set(dataset_names())
    assert (REPORTS_DIR / "report.html.j2").is_file() and (DATASETS_DIR / "her2st.manifest.tsv").is_file()


def test_pyproject_packages_every_bench_package_and_the_plugin_folders():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bench").rglob("__init__.py")}
    assert on_disk <= packages, f"add to pyproject.toml's packages: {sorted(on_disk - packages)}"
    assert config["package-dir"] == {"bench.builtin.methods": "methods", "bench.builtin.datasets": "datasets",
                                     "bench.builtin.reports": "reports"}
    # Every non-Python file the plug-in folders hold matches a package-data pattern, so the wheel has it.
    data = config.get("package-data", {})
    for package, folder in config["package-dir"].items():
        patterns = data.get(package, [])
        for path in (REPO / folder).iterdir():
            if path.suffix != ".py" and path.is_file():
                assert any(path.match(p) for p in patterns), f"{path} would be left out of the wheel"


def test_the_version_is_written_once(capsys):
    source = (REPO / "pyproject.toml").read_text()
    assert "dynamic = [\"version\"]" in source and "\nversion =" not in source.split("[tool.setuptools")[0]
    assert ast.literal_eval(next(line.split("=", 1)[1] for line in (REPO / "bench" / "__init__.py").read_text()
                                 .splitlines() if line.startswith("__version__"))) == bench.__version__
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"stbench {bench.__version__}"
