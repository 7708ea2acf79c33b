"""Runner and tracking on synthetic data: atomic job folders, resume, failures, MLflow records."""
import json
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest

from bench.pipeline import benchmark
from bench.records import JobKey, Setting
from bench.registry import clear_caches
from bench.run.config import BenchConfig

PLUGINS = textwrap.dedent('''
    import numpy as np
    from bench.method import Method

    class Broken(Method):
        name = "broken"
        description = "fails while fitting"
        def __init__(self):
            pass
        def fit(self, train):
            raise RuntimeError("planted failure")
        def predict(self, test):
            raise AssertionError("never reached")

    class NanPredictor(Method):
        name = "nan-predictor"
        description = "returns NaN"
        def __init__(self):
            pass
        def fit(self, train):
            return self
        def predict(self, test):
            return np.full((len(test), test.n_genes), np.nan)

    class EpochLogger(Method):
        name = "epoch-logger"
        description = "logs a loss per epoch, predicts the mean"
        def __init__(self, epochs: int = 3):
            self.epochs = epochs
        def fit(self, train):
            for epoch in range(self.epochs):
                self.runtime.log_metric("train_loss", 1.0 / (epoch + 1), epoch)
            self.mean_ = train.expression.mean(axis=0)
            return self
        def predict(self, test):
            return np.tile(self.mean_, (len(test), 1))

    class PerDataset(Method):
        name = "per-dataset"
        description = "predicts the mean; declares published settings for this dataset"
        profiles = {"paper": {}, "quick": {}}
        dataset_settings = {"synthetic": {"k": 7}, "cscc": {"k": 2}}
        def __init__(self, k: int = 1):
            self.k = k
        def fit(self, train):
            self.mean_ = train.expression.mean(axis=0)
            return self
        def predict(self, test):
            return np.tile(self.mean_, (len(test), 1))

    class OtherDataset(PerDataset):
        name = "other-dataset"
        dataset_settings = {"cscc": {"k": 2}}
''')


@pytest.fixture
def plugin_methods(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "test_plugins.py").write_text(PLUGINS)
    monkeypatch.setenv("STBENCH_METHODS_PATH", str(folder))
    clear_caches()
    yield
    clear_caches()


SETTING = Setting("lopo", "top-mean:40")  # _config's
S = SETTING.name


def _config(out, methods, **kw):
    """A resolved configuration (the pipeline takes it resolved, as the command line gives it)."""
    kw.setdefault("panel", SETTING.panel)
    return BenchConfig(methods=methods, dataset="synthetic", out=str(out), progress=False,
                       pretrained="no", params=kw.pop("params", {"linear-probe": {"patch_px": 32}}
                                                      if "linear-probe" in methods else {}), **kw).resolved()


def _runs(out, experiment="stbench-synthetic-lopo"):
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment])


@pytest.mark.slow
def test_benchmark_writes_complete_jobs_and_tracks_them(tmp_path):
    out = tmp_path / "run"
    result = benchmark(_config(out, ["mean", "linear-probe", "spatial-oracle"]))
    assert result.ok and len(result.completed) == 9 and not result.skipped

    for method in ("mean", "linear-probe", "spatial-oracle"):
        for fold in range(3):
            folder = JobKey("synthetic", SETTING, fold, method, 0).folder(out)
            record = json.loads((folder / "COMPLETE").read_text())
            assert set(record["files"]) == {"predictions.npz", "train_gene_stats.csv", "result.json",
                                            "config.json", "panel.txt"}
            saved = np.load(folder / "predictions.npz")
            assert saved["prediction"].shape == saved["truth"].shape == (200, 40)
            # Each test spot's array coordinates travel with its prediction (maps need no dataset).
            assert saved["array_coords"].shape == (200, 2)
            spot = str(saved["spot_ids"][7])
            assert "x".join(map(str, saved["array_coords"][7])) == spot  # synthetic ids are "<x>x<y>"
    # The run's wall time splits into the methods' own time and the suite's, both saved.
    timing = json.loads((out / "run_timing.json").read_text())
    assert timing == result.timing and timing["jobs_run"] == 9
    # The methods' time: fit + predict, and the frozen encoder's forward passes (linear-probe's embeddings).
    job_timing = [json.loads((JobKey("synthetic", SETTING, f, m, 0).folder(out) / "result.json").read_text())["timing"]
                  for m in ("mean", "linear-probe", "spatial-oracle") for f in range(3)]
    assert sum(t["embedding_seconds"] for t in job_timing) > 0  # the first fold embedded its sections
    fit_predict = sum(t[k] for t in job_timing for k in ("fit_seconds", "predict_seconds", "embedding_seconds"))
    assert timing["method_seconds"] == pytest.approx(fit_predict)
    assert 0 < timing["method_seconds"] < timing["wall_seconds"]
    assert timing["harness_seconds"] == pytest.approx(timing["wall_seconds"] - timing["method_seconds"])
    # The same fold gives every method the same panel.
    for fold in range(3):
        panels = {(JobKey("synthetic", SETTING, fold, m, 0).folder(out) / "panel.txt").read_text()
                  for m in ("mean", "linear-probe", "spatial-oracle")}
        assert len(panels) == 1

    per_gene = pd.read_parquet(out / "results" / "per_gene.parquet")
    assert len(per_gene) == 3 * 3 * 40
    summary = pd.read_csv(out / "results" / "summary.csv").set_index("method")
    assert np.isnan(summary.loc["mean", "acg_pearson"]) and summary.loc["mean", "n_undefined_pearson"] == 120
    assert summary.loc["spatial-oracle", "acg_pearson"] > summary.loc["linear-probe", "acg_pearson"] > 0.1

    runs = _runs(out)
    parents = runs[runs["tags.stbench.parent"] == "true"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(parents["tags.stbench.method"]) == ["linear-probe", "mean", "spatial-oracle"]
    assert len(children) == 9 and (children["status"] == "FINISHED").all()
    split_sha = json.loads((JobKey("synthetic", SETTING, 0, "mean", 0).folder(out) / "result.json")
                           .read_text())["split_sha256"]
    for column, expected in {"tags.seed": "0", "tags.device": "cpu", "tags.pretrained": "false",
                             "tags.split_sha256": split_sha, "tags.split_leaks_patients": "false"}.items():
        assert set(children[column]) == {expected}, column
    assert children["tags.git_commit"].notna().all() and children["tags.version.torch"].notna().all()
    assert children["params.benchmark.panel"].eq("top-mean:40").all()
    probe = children[children["tags.stbench.method"].isna() & children["tags.stbench.job"].str.contains("linear")]
    assert probe["metrics.acg_pearson"].notna().all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(probe["run_id"].iloc[0])}
    assert {"predictions.npz", "config.json", "synthetic-lopo-seed0.json"} <= artifacts
    # The runner closed every run it opened; the evaluation's headline and the time split came after.
    assert (parents["status"] == "FINISHED").all()
    assert parents["metrics.acg_pearson"].notna().sum() == 2 and parents["metrics.run.wall_seconds"].notna().all()


@pytest.mark.slow
def test_rerun_skips_complete_jobs_and_redoes_damaged_ones(tmp_path):
    out = tmp_path / "run"
    benchmark(_config(out, ["mean"]))
    n_runs = len(_runs(out))
    again = benchmark(_config(out, ["mean"]))
    assert len(again.skipped) == 3 and not again.completed
    assert len(_runs(out)) == n_runs, "a skipped job logs no new run"

    damaged = JobKey("synthetic", SETTING, 1, "mean", 0).folder(out) / "train_gene_stats.csv"
    damaged.write_text("gene,train_mean\nDAMAGED_MARKER,0.99\n")  # a gene name no real output holds
    third = benchmark(_config(out, ["mean"]))
    assert third.completed == [f"synthetic/{S}/mean/seed0/fold1"] and len(third.skipped) == 2
    assert "DAMAGED_MARKER" not in damaged.read_text()


@pytest.mark.slow
def test_a_rerun_with_nothing_new_reads_nothing_and_rewrites_nothing(tmp_path, monkeypatch):
    """Every job complete and results/ and the report made from exactly those job folders: the rerun
    neither loads data nor evaluates, logs or reports again; anything new (here: a deleted report) and it
    does the whole end of the run again."""
    import bench.run.runner as runner

    out = tmp_path / "run"
    first = benchmark(_config(out, ["mean"]))
    assert not first.up_to_date and first.report == out / "report.html"
    written = {p: p.stat().st_mtime_ns for p in [out / "report.html", *(out / "results").iterdir()]}
    n_runs = len(_runs(out))

    def no_data_checks(config):
        raise AssertionError("a rerun with nothing to do must not read or check the data")

    with monkeypatch.context() as m:
        m.setattr(runner, "prepare_run", no_data_checks)
        again = benchmark(_config(out, ["mean"]))
    assert again.up_to_date and len(again.skipped) == 3 and not again.completed
    assert list(again.summary["method"]) == ["mean"] and again.report == out / "report.html"
    assert {p: p.stat().st_mtime_ns for p in written} == written, "nothing rewritten"
    assert len(_runs(out)) == n_runs

    (out / "report.html").unlink()
    third = benchmark(_config(out, ["mean"]))
    assert not third.up_to_date and (out / "report.html").is_file()
    assert benchmark(_config(out, ["mean"])).up_to_date


@pytest.mark.slow
def test_rerun_with_a_different_configuration_is_refused(tmp_path):
    out = tmp_path / "run"
    benchmark(_config(out, ["mean"]))
    result = benchmark(_config(out, ["mean"], max_train_spots=50))  # same setting, other training budget
    assert len(result.failed) == 3
    assert all("different configuration" in why for why in result.failed.values())


@pytest.mark.slow
def test_failing_jobs_are_reported_and_never_recorded(tmp_path, plugin_methods):
    out = tmp_path / "run"
    result = benchmark(_config(out, ["mean", "broken", "nan-predictor"]))
    assert not result.ok
    assert set(result.failed) == {f"synthetic/{S}/{m}/seed0/fold{k}" for m in ("broken", "nan-predictor")
                                  for k in range(3)}
    assert "planted failure" in result.failed[f"synthetic/{S}/broken/seed0/fold0"]
    assert "non-finite" in result.failed[f"synthetic/{S}/nan-predictor/seed0/fold0"]
    assert len(result.completed) == 3  # the mean jobs still ran
    for m in ("broken", "nan-predictor"):
        folder = JobKey("synthetic", SETTING, 0, m, 0).folder(out)
        assert not folder.exists() and not list(folder.parent.glob(".*tmp*")), "nothing half-written"
        assert (out / "failures" / f"synthetic__{S}__{m}__seed0__fold0.log").is_file()
    assert set(pd.read_parquet(out / "results" / "per_gene.parquet")["method"]) == {"mean"}
    runs = _runs(out)
    failed = runs[runs["tags.stbench.job"].fillna("").str.contains("broken|nan-predictor")]
    assert len(failed) == 6 and (failed["status"] == "FAILED").all()
    # A failure is never cached: the next run tries those jobs again.
    assert len(benchmark(_config(out, ["broken"])).failed) == 3


@pytest.mark.slow
def test_per_epoch_metrics_reach_mlflow(tmp_path, plugin_methods):
    out = tmp_path / "run"
    benchmark(_config(out, ["epoch-logger"], folds=[0]))
    runs = _runs(out)
    child = runs[runs["tags.mlflow.parentRunId"].notna()]["run_id"].iloc[0]
    history = mlflow.MlflowClient().get_metric_history(child, "train_loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.333)]


@pytest.mark.slow
def test_paper_profile_applies_and_logs_the_datasets_published_settings(tmp_path, plugin_methods, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="bench.run.runner"):
        result = benchmark(_config(out, ["per-dataset", "other-dataset"], folds=[0], profile="paper"))
    assert result.ok
    assert "per-dataset [paper profile]: published settings for dataset synthetic: k=7" in caplog.text
    assert "other-dataset [paper profile]: no published settings for dataset synthetic: using the HER2+ values" \
        in caplog.text
    assert "per-dataset [paper profile]: k=7" in caplog.text and "other-dataset [paper profile]: k=1" in caplog.text
    for method, k in (("per-dataset", 7), ("other-dataset", 1)):
        folder = JobKey("synthetic", SETTING, 0, method, 0).folder(out)
        assert json.loads((folder / "config.json").read_text())["method_params"] == {"k": k}
    parents = _runs(out)
    parents = parents[parents["tags.stbench.parent"] == "true"].set_index("tags.stbench.method")
    assert parents.loc["other-dataset", "tags.dataset_settings"].startswith("no published settings")


def test_unknown_names_are_refused_before_any_work(tmp_path):
    from bench.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="valid methods: .*linear-probe"):
        benchmark(_config(tmp_path, ["nope"]))
    with pytest.raises(UnknownNameError, match="valid protocols"):
        benchmark(_config(tmp_path, ["mean"], protocol="leave-one-out"))
    with pytest.raises(ValueError, match="has no parameter"):
        benchmark(_config(tmp_path, ["mean"], params={"mean": {"alpha": 1}}))
    assert not (tmp_path / "jobs").exists()


@pytest.mark.slow
def test_methods_run_one_at_a_time_into_one_folder_build_one_comparison(tmp_path):
    out = tmp_path / "run"
    benchmark(_config(out, ["mean"]))
    benchmark(_config(out, ["spatial-oracle"]))
    assert json.loads((out / "config.json").read_text())["methods"] == ["mean", "spatial-oracle"]
    per_method = pd.read_parquet(out / "results" / "per_method.parquet")
    assert set(per_method["method"]) == {"mean", "spatial-oracle"}
    per_gene = pd.read_parquet(out / "results" / "per_gene.parquet")
    assert per_gene.groupby("method").size().to_dict() == {"mean": 120, "spatial-oracle": 120}
    # Another panel is another setting: its jobs live beside the first setting's, never mixed into its tables.
    other = benchmark(_config(out, ["spatial-oracle"], panel="top-mean:10"))
    assert other.ok and len(other.completed) == 3 and other.settings_text
    assert sorted(p.name for p in (out / "jobs" / "synthetic").iterdir()) == sorted([S, "lopo_top-mean10_per-spot"])
    assert pd.read_parquet(out / "results" / "per_gene.parquet").groupby("method").size().to_dict() == {
        "spatial-oracle": 30}
    assert (out / "settings.md").is_file() and "top-mean:10" in other.settings_text
