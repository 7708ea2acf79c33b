"""Adding a method: the example file of docs/add-a-method.md, and an installed package's entry point."""
import re
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from bench.pipeline import benchmark
from bench.registry import clear_caches, get_method_class, method_catalogue, method_classes
from bench.run.config import BenchConfig
from bench.testing import CHECKS, check_method


GUIDE = REPO / "docs" / "add-a-method.md"


def _readme_example() -> str:
    return re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S).group(1)


@pytest.mark.slow
def test_readme_method_example_runs_and_learns_the_planted_signal(tmp_path, monkeypatch, synthetic):
    folder = tmp_path / "my_methods"
    folder.mkdir()
    (folder / "colour_ridge.py").write_text(_readme_example())
    monkeypatch.setenv("STBENCH_METHODS_PATH", str(folder))
    clear_caches()
    try:
        assert "colour-ridge" in method_classes()
        out = tmp_path / "run"
        result = benchmark(BenchConfig(methods=["colour-ridge", "mean"], dataset="synthetic",
                                           panel="top-mean:40", out=str(out), progress=False).resolved())
        assert result.ok, result.failed
        per_gene = pd.read_parquet(out / "results" / "per_gene.parquet")
        planted = per_gene[per_gene["gene"].isin(synthetic.attrs["planted_genes"])]
        assert planted[planted["method"] == "colour-ridge"]["pearson"].mean() > 0.5
    finally:
        clear_caches()


def test_readme_method_example_passes_bench_check(tmp_path, synthetic):
    """docs/add-a-method.md ends with `python -m bench check path/to/my_method.py`: its example passes every
    check."""
    assert GUIDE.read_text().rstrip().endswith("python -m bench check path/to/my_method.py\n```")
    path = tmp_path / "colour_ridge.py"
    path.write_text(_readme_example())
    results = check_method(str(path), dataset=synthetic, cache_dir=tmp_path / "cache")
    assert [r.check for r in results] == list(CHECKS)
    assert all(r.status == "pass" for r in results), "\n".join(map(str, results))


def test_installed_package_registers_a_method_through_an_entry_point(tmp_path, monkeypatch, synthetic):
    site = tmp_path / "site"
    (site / "extra_pkg").mkdir(parents=True)
    (site / "extra_pkg" / "__init__.py").write_text(
        "import numpy as np\n"
        "from bench.method import Method\n"
        "class Zeros(Method):\n"
        "    name = 'zeros'\n"
        "    description = 'predicts zero'\n"
        "    def __init__(self):\n        pass\n"
        "    def fit(self, train):\n        return self\n"
        "    def predict(self, test):\n        return np.zeros((len(test), test.n_genes))\n")
    dist = site / "extra_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[stbench.methods]\nzeros = extra_pkg:Zeros\n")
    monkeypatch.syspath_prepend(str(site))
    clear_caches()
    try:
        listed = method_catalogue()["zeros"]  # read from the package's source, not imported
        assert (listed.kind, listed.description, listed.origin) == ("method", "predicts zero",
                                                                    "entry point extra_pkg:Zeros")
        assert "extra_pkg" not in sys.modules
        cls = get_method_class("zeros")
        assert cls.__module__ == "extra_pkg"
        assert np.all(cls().fit(None).predict(type("D", (), {"__len__": lambda s: 2, "n_genes": 3})()) == 0)
        # `bench check zeros` finds it by its entry point's name and reads its listing from the package's source.
        results = check_method("zeros", checks=("listing", "hyperparameters", "prediction"), dataset=synthetic,
                               cache_dir=tmp_path / "cache")
        assert [(r.check, r.status) for r in results] == [("listing", "pass"), ("hyperparameters", "pass"),
                                                          ("prediction", "pass")], "\n".join(map(str, results))
        assert "extra_pkg/__init__.py" in results[0].detail
    finally:
        clear_caches()
        sys.modules.pop("extra_pkg", None)


def test_datasets_path_adds_a_dataset_module(tmp_path, monkeypatch):
    """A folder in STBENCH_DATASETS_PATH adds its modules, e.g. a sized variant of the synthetic data."""
    from bench.data.locations import load_dataset
    from bench.registry import dataset_modules

    folder = tmp_path / "my_datasets"
    folder.mkdir()
    (folder / "tiny_synthetic.py").write_text(
        "from bench.registry import get_dataset_module\n"
        "NAME = 'tiny-synthetic'\n"
        "def load(root):\n"
        "    dataset = get_dataset_module('synthetic').load(root, n_patients=2, sections_per_patient=1, grid=4)\n"
        "    dataset.name = NAME\n"
        "    return dataset\n")
    assert "tiny-synthetic" not in dataset_modules()
    monkeypatch.setenv("STBENCH_DATASETS_PATH", str(folder))
    clear_caches()
    try:
        assert {"tiny-synthetic", "synthetic"} <= set(dataset_modules())
        dataset = load_dataset("tiny-synthetic", None)
        assert dataset.name == "tiny-synthetic" and list(dataset.sections) == ["P1", "Q1"]
        assert dataset["P1"].counts.n_obs == 16
    finally:
        clear_caches()


def test_the_listing_read_from_source_matches_the_imported_classes(tmp_path, monkeypatch):
    """`bench list` reads names, kinds and descriptions without importing; where the source does not settle
    them (a base class from another module, a computed name) it imports the file. Either way it lists what
    the registry would load."""
    folder = tmp_path / "my_methods"
    folder.mkdir()
    (folder / "family.py").write_text(
        "from bench import method as m\n"
        "import bench.method\n"
        "class Base(m.Method):\n"
        "    kind = 'negative-control'\n"
        "    description = 'a' ' b'\n"
        "class Child(Base):\n"
        "    name = 'child'\n"
        "class Other(bench.method.Method):\n"
        "    name: str = 'other'\n"
        "class Helper:\n"
        "    name = 'not a method'\n")
    (folder / "computed.py").write_text(
        "from bench.method import Method\n"
        "class Computed(Method):\n"
        "    name = '-'.join(['com', 'puted'])\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "shared_base.py").write_text(
        "from bench.method import Method\n"
        "class SharedBase(Method):\n"
        "    kind = 'positive-control'\n")
    (folder / "elsewhere.py").write_text(
        "from shared_base import SharedBase\n"
        "class Grandchild(SharedBase):\n"
        "    name = 'grandchild'\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("STBENCH_METHODS_PATH", str(folder))
    clear_caches()
    try:
        listed = {n: (i.kind, i.description) for n, i in method_catalogue().items()}
        loaded = {n: (c.kind, c.description) for n, c in method_classes().items()}
        assert listed == loaded
        assert listed["child"] == ("negative-control", "a b") and listed["other"] == ("method", "")
        assert listed["grandchild"] == ("positive-control", "")
        assert {"com-puted", "grandchild", "mean", "st-net"} <= set(listed) and "not a method" not in listed
    finally:
        clear_caches()
        sys.modules.pop("shared_base", None)
