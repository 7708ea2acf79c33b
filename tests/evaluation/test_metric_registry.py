"""The metric registry: every table and statistic iterates it; a metric from outside the repository (entry
point ``stbench.metrics``, the example of docs/add-a-metric.md) appears everywhere; bad names are refused."""
import re
import sys

import numpy as np
import pytest
from conftest import REPO
from synthetic_job_folders import write_run

from bench.cli import main
from bench.evaluation import metric_registry, stats
from bench.evaluation.evaluate import evaluate_jobs, evaluate_run
from bench.evaluation.metric_registry import Metric, UnknownMetricError

METHODS = {"good": 0.9, "fair": 0.5, "poor": 0.1, "mean": 0.0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics")
    return out, write_run(out, METHODS)


def test_every_registered_metric_has_a_complete_entry():
    known = metric_registry.all_metrics()
    assert {"pearson", "rmse", "nrmse_range", "nrmse_sd", "nmi", "js_divergence", "ssim", "r2_gene", "pcc_spot",
            "r2_spot", "moran_prediction", "moran_truth"} | {f"auc_{c}" for c in (0, 1, 2, 5, 7, 10, 20)} <= set(known)
    for m in known.values():
        assert m.level in metric_registry.LEVELS and m.source and set(m.needs) <= set(metric_registry.NEEDS)
    assert [m.name for m in metric_registry.resolve("rmse")] == ["pearson", "rmse"]  # the headline always


def test_unknown_metric_is_refused_by_name_with_the_known_ones(run, capsys):
    out, _ = run
    with pytest.raises(UnknownMetricError, match=r"unknown metric 'nrmse'; known metrics: pearson, spearman"):
        metric_registry.resolve(["pearson", "nrmse"])
    assert issubclass(UnknownMetricError, ValueError)
    assert main(["evaluate", str(out), "--metrics", "pearson,nrmse", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown metric 'nrmse'" in err[0] and "nrmse_range" in err[0]
    assert not (out / "results").exists()  # refused before anything was written


@pytest.mark.slow
def test_every_metric_reaches_every_table_and_statistic(run):
    _, folders = run
    ev = evaluate_jobs(folders, n_boot=200)
    names = ev.settings["metrics"]
    assert names == list(metric_registry.all_metrics())
    ranked = [m for m in names if stats.higher_is_better(m) is not None]
    for s in stats.GENE_SETS:
        for m in names:
            col = f"{s}_{m}"
            assert col in ev.per_job and col in ev.per_section and col in ev.per_patient, col
            assert f"patient_{col}" in ev.per_method and f"patient_{col}_ci_low" in ev.per_method, col
    good = ev.per_method.set_index("method").loc["good"]
    # 3 patients: every defined patient-level score has an interval, the planted best method ranks first.
    mine = ev.per_patient[ev.per_patient["method"] == "good"]
    for m in ranked:
        assert np.isfinite(good[f"patient_acg_{m}"]), m
        if mine[f"acg_{m}"].notna().sum() == 3:
            assert good[f"patient_acg_{m}_ci_low"] <= good[f"patient_acg_{m}"] <= good[f"patient_acg_{m}_ci_high"], m
        else:  # e.g. AUC > 20 where a patient has no count above 20: fewer than 3 patients, no interval
            assert np.isnan(good[f"patient_acg_{m}_ci_low"]), m
    assert set(ev.patient_pairwise["metric"]) == set(ranked)
    assert set(ev.friedman["by_metric"]) == {f"acg_{m}" for m in ranked}
    ranks = ev.per_method.set_index("method")["mean_rank"]
    assert ranks["good"] < ranks["fair"] < ranks["poor"] and np.isnan(ranks["mean"])  # controls are not ranked
    # Undefined values are counted, never 0: the mean control's prediction is constant in every gene.
    mean_job = ev.per_job[ev.per_job["method"] == "mean"].iloc[0]
    assert mean_job["n_undefined_pearson"] == 30 and np.isnan(mean_job["acg_pearson"])
    assert mean_job["n_undefined_nmi"] == 30 and np.isnan(mean_job["acg_nmi"])
    # SVG: the 20 genes with the highest training Moran's I (written in decreasing order), recorded per job.
    assert ev.per_job["svg_genes"].iloc[0] == ",".join(f"G{j}" for j in range(20))
    # Moran's I of the truth is the same for every method: it is the truth's.
    truth_i = ev.per_job.groupby("fold")["acg_moran_truth"].nunique()
    assert (truth_i == 1).all()


def test_readme_metric_registered_from_outside_the_repository(run, tmp_path, monkeypatch):
    """docs/add-a-metric.md's package, installed the way pip installs it (a dist-info with the entry point),
    appears in a fresh registry without any code of this repository naming it."""
    _, folders = run
    section = REPO.joinpath("docs", "add-a-metric.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    entry = re.search(r'\[project.entry-points."stbench.metrics"\]\n(\w+) = "([\w.:]+)"', section)
    site = tmp_path / "site"
    site.mkdir()
    (site / "cosine_metric.py").write_text(code)
    info = site / "my_metrics-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-metrics\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[stbench.metrics]\n{entry.group(1)} = {entry.group(2)}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(metric_registry, "_entry_points_loaded", False)
    monkeypatch.setattr(metric_registry, "_REGISTRY", dict(metric_registry._REGISTRY))
    try:
        assert "cosine" in metric_registry.all_metrics()
        ev = evaluate_jobs(folders, n_boot=100, metrics=["cosine"])
        assert ev.settings["metrics"] == ["pearson", "cosine"]
        job = ev.per_gene[(ev.per_gene["method"] == "good") & (ev.per_gene["fold"] == 0)]
        arrays = np.load(folders[0] / "predictions.npz")
        t, p = arrays["truth"].astype(float), arrays["prediction"].astype(float)
        with np.errstate(invalid="ignore"):  # the all-zero gene: 0 / 0, undefined in both
            expected = (t * p).sum(0) / np.linalg.norm(t, axis=0) / np.linalg.norm(p, axis=0)
        np.testing.assert_allclose(job["cosine"].to_numpy(), expected, rtol=1e-6)
        good = ev.per_method.set_index("method").loc["good"]
        assert np.isfinite(good["patient_acg_cosine_ci_low"]) and "rank_acg_cosine" in ev.per_method
    finally:
        sys.modules.pop("cosine_metric", None)


def test_register_refuses_a_taken_name_and_a_bad_entry():
    with pytest.raises(ValueError, match="already registered"):
        metric_registry.register(Metric("pearson", lambda t, p: t[0], "gene", True))
    with pytest.raises(ValueError, match="level"):
        Metric("x", lambda t, p: t[0], "patient", True)
    with pytest.raises(ValueError, match="needs"):
        Metric("x", lambda t, p: t[0], "gene", True, needs=("images",))


@pytest.mark.slow
def test_evaluate_cli_computes_the_metrics_named(run, tmp_path):
    out, _ = run
    assert main(["evaluate", str(out), "--metrics", "rmse,pcc_spot", "--no-mlflow", "--n-boot", "50"]) == 0
    ev = evaluate_run(out, n_boot=50, metrics="rmse,pcc_spot")
    assert ev.settings["metrics"] == ["pearson", "rmse", "pcc_spot"]
    assert "acg_rmse" in ev.per_job and "acg_nmi" not in ev.per_job
