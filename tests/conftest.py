"""Shared fixtures. Real data is read from STBENCH_DATA, else ../shared/data, else the user cache that
`python -m bench run` and `bench data fetch` download into (``real_data_dir``); tests that need it are
marked ``integration`` and skipped, with the reason, where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir(environ=os.environ, shared: Path = REPO.parent / "shared" / "data") -> Path:
    """Where the tests find real data: ``STBENCH_DATA`` if set; else the development copy in
    ``../shared/data``; else the suite's own data folder in the user cache, where the Quick start's
    `python -m bench run` downloaded her2st, once that download is complete."""
    if environ.get("STBENCH_DATA"):
        return Path(environ["STBENCH_DATA"]).expanduser()
    if (shared / "her2st").is_dir():
        return shared
    from bench.data.locations import data_present, resolve_data_dir

    cache = resolve_data_dir(None)
    return cache if data_present("her2st", cache) else shared


BENCHMARKS = REPO / "tests" / "benchmarks"


@pytest.hookimpl(tryfirst=True)  # before pytest's own `-m` selection reads the markers
def pytest_collection_modifyitems(items):
    """Whole kinds of test are ``slow`` (left out of the fast loop, ``python -m pytest -m "not slow"``): every
    test that reads the real her2st data (``integration``: runs on the real cohort), starts a SLURM cluster
    (``slurm``) or measures the suite (``tests/benchmarks/``). Single slow tests elsewhere carry the mark."""
    for item in items:
        if (item.get_closest_marker("integration") or item.get_closest_marker("slurm")
                or BENCHMARKS in item.path.parents):
            item.add_marker(pytest.mark.slow)


SHARED_DATA = real_data_dir()
HER2ST = SHARED_DATA / "her2st"
# The published 785-gene HER2+ panel ships with the development data only (the download has no panel).
PANEL_785 = SHARED_DATA / "gene-panels" / "her2st_785.txt"
WHERE = "STBENCH_DATA, ../shared/data or the user cache (`python -m bench data fetch her2st` fills it)"

# A method plug-in that kills its own process with SIGKILL (as the OOM killer or `kill -9` would) while the
# file named by $STBENCH_TEST_MARKER exists (always, when the variable is unset): a worker that dies.
SUICIDAL_METHOD = '''
import os, signal
from pathlib import Path
import numpy as np
from bench.method import Method

class Suicidal(Method):
    name = "suicidal"
    description = "SIGKILLs its own process while $STBENCH_TEST_MARKER exists"
    def __init__(self):
        pass
    def fit(self, train):
        marker = os.environ.get("STBENCH_TEST_MARKER")
        if marker is None or Path(marker).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        self.mean_ = train.expression.mean(axis=0)
        return self
    def predict(self, test):
        return np.tile(self.mean_, (len(test), 1))
'''

def visium_lattice(n_rows: int, n_cols: int):
    """Visium's hexagonal array (every other position of each row, 100 µm between neighbours): the kept
    (array_row, array_col) and each spot's position in µm."""
    import numpy as np

    rows, cols = np.mgrid[0:n_rows, 0:n_cols]
    keep = (rows + cols) % 2 == 0
    row, col = rows[keep], cols[keep]
    return row, col, np.column_stack([col * 50.0, row * 50.0 * np.sqrt(3)])


def run_synthetic_with_plugins(base: Path, plugins: dict[str, str], methods: list[str], load=None,
                               params: dict | None = None):
    """``bench.pipeline.benchmark`` on the synthetic data with method plug-in files (file name -> source) in
    ``base/plugins`` and a cache of its own; ``load(name, data_dir)`` replaces the dataset loader if given;
    ``params``: hyper-parameters per method, as ``--set`` gives them.
    Returns the run folder (``base/run``); the registry's caches are cleared before and after."""
    import bench.run.runner
    from bench.pipeline import benchmark
    from bench.registry import clear_caches
    from bench.run.config import BenchConfig

    (base / "plugins").mkdir()
    for name, source in plugins.items():
        (base / "plugins" / name).write_text(source)
    out = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STBENCH_METHODS_PATH", str(base / "plugins"))
        mp.setenv("STBENCH_CACHE", str(base / "cache"))
        if load is not None:
            mp.setattr(bench.run.runner, "load_dataset", load)
        clear_caches()
        try:
            result = benchmark(BenchConfig(methods=methods, dataset="synthetic", panel="top-mean:40",
                                               out=str(out), progress=False, pretrained="no",
                                               params=params or {}).resolved())
        finally:
            clear_caches()
    assert result.ok, result.failed
    return out


needs_her2st = pytest.mark.skipif(not (HER2ST / "data" / "ST-cnts").is_dir(),
                                  reason=f"real her2st data not found in {WHERE}")
needs_panel_785 = pytest.mark.skipif(not PANEL_785.is_file(), reason=f"{PANEL_785} not found (development data)")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's cache and each other's MLflow stores."""
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "stbench-cache"))
    monkeypatch.delenv("STBENCH_METHODS_PATH", raising=False)
    monkeypatch.delenv("STBENCH_DATASETS_PATH", raising=False)


@pytest.fixture(scope="session")
def synthetic():
    from bench.data.locations import load_dataset

    return load_dataset("synthetic", None)


@pytest.fixture(scope="session")
def her2st():
    from bench.data.locations import load_dataset

    if not (HER2ST / "data" / "ST-cnts").is_dir():
        pytest.skip(f"real her2st data not found in {WHERE}")
    return load_dataset("her2st", SHARED_DATA)


@pytest.fixture(scope="session")
def slurm_session(tmp_path_factory):
    """A real single-node SLURM cluster (tests/slurm_cluster.py), started once for every SLURM test."""
    from slurm_cluster import SlurmCluster, ensure_packages

    ok, reason = ensure_packages()
    if not ok:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        print(f"\n[slurm] cluster start-up: {cluster.startup_seconds:.1f} s")
        yield cluster
