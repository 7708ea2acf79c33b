"""`bench evaluate` recomputes a finished run's scores from its job folders and logs them to the right runs."""
import json
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_synthetic_with_plugins

from bench.cli import main
from bench.evaluation import stats
from bench.evaluation.evaluate import evaluate_run, folder_headline_scores
from bench.records import JOB_FILES, JobKey, Setting, write_job_folder
from bench.run.tracking import log_evaluation_to_store

# A synthetic run of three methods, then the whole evaluation (bootstrap, clustering, statistics) several times.
pytestmark = pytest.mark.slow

TOY = Setting("lopo", "hvg:60")  # the setting of the hand-made toy jobs

METHODS = ["mean", "spatial-oracle", "colour-ridge"]
METRICS = ["pearson", "pearson_p", "spearman", "mse", "mae", "truth_mean", "truth_variance"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A synthetic run of two controls and docs/add-a-method.md's colour-ridge method (cheap: mean RGB + ridge)."""
    guide = REPO.joinpath("docs", "add-a-method.md").read_text()
    readme_example = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    out = run_synthetic_with_plugins(tmp_path_factory.mktemp("evaluate"), {"colour_ridge.py": readme_example}, METHODS)
    run_time = {name: pd.read_parquet(out / "results" / f"{name}.parquet") for name in ("per_gene", "per_job")}
    return out, run_time


def _job_folders(out):
    return [JobKey("synthetic", Setting("lopo", "top-mean:40"), fold, m, 0).folder(out) for m in METHODS
            for fold in range(3)]


def test_evaluate_reproduces_the_per_gene_numbers_written_at_run_time(finished):
    out, run_time = finished
    stamps = {f: (f / "COMPLETE").stat().st_mtime_ns for f in _job_folders(out)}
    for name in ("per_gene", "per_job", "per_method", "summary"):
        (out / "results" / (f"{name}.csv" if name == "summary" else f"{name}.parquet")).unlink()
    assert main(["evaluate", str(out)]) == 0
    assert {f: (f / "COMPLETE").stat().st_mtime_ns for f in _job_folders(out)} == stamps, "no job was redone"

    per_gene = pd.read_parquet(out / "results" / "per_gene.parquet")
    assert len(per_gene) == 3 * 3 * 40 and not per_gene.duplicated(["method", "fold", "gene"]).any()
    for folder in _job_folders(out):
        result = json.loads((folder / "result.json").read_text())
        assert "scores" not in result, "the job scores after writing its folder"
        job = result["job"]
        mine = per_gene[(per_gene["method"] == job["method"]) & (per_gene["fold"] == job["fold"])]
        assert mine["gene"].tolist() == (folder / "panel.txt").read_text().split()
        assert set(METRICS) <= set(mine.columns)
        train = pd.read_csv(folder / "train_gene_stats.csv", float_precision="round_trip")
        np.testing.assert_array_equal(mine["train_variance"].to_numpy(), train["train_variance"].to_numpy())
        assert mine["in_hvg"].sum() == 40  # a 40-gene panel: HEG and HVG are every gene
    pd.testing.assert_frame_equal(per_gene, run_time["per_gene"])  # bench run wrote the same table

    per_job = pd.read_parquet(out / "results" / "per_job.parquet").set_index("job_key")
    for folder in _job_folders(out):
        result = json.loads((folder / "result.json").read_text())
        row = per_job.loc[result["job_key"]]
        assert row["mlflow_run_id"] == result["mlflow_run_id"]
        scores = folder_headline_scores(folder)  # what the job computed after writing the folder, and logged
        assert row["n_undefined_pearson"] == scores["n_undefined_pearson"]
        # The job's in-run score and the evaluation's pooled ACG/HEG come from one function: equal bit for bit.
        np.testing.assert_array_equal(row[["acg_pearson", "heg_pearson"]].to_numpy(dtype=float),
                                      [scores["acg_pearson"], scores["heg_pearson"]])
    summary = pd.read_csv(out / "results" / "summary.csv", float_precision="round_trip").set_index("method")
    assert {"kind", "n_jobs", "acg_pearson", "acg_pearson_sd", "heg_pearson", "mean_rank", "pooled_acg_pearson",
            "n_undefined_pearson", "fit_seconds", "predict_seconds", "pretrained"} <= set(summary.columns)
    assert np.isnan(summary.loc["mean", "acg_pearson"]) and summary.loc["mean", "n_undefined_pearson"] == 120
    # summary.csv's headline is the report's (patient level): the same number under the same name.
    per_method = pd.read_parquet(out / "results" / "per_method.parquet").set_index("method")
    np.testing.assert_array_equal(summary["acg_pearson"].to_numpy(),
                                  per_method.loc[summary.index, "patient_acg_pearson"].to_numpy())
    oracle = summary.loc["spatial-oracle"]
    assert oracle["acg_pearson_ci_low"] < oracle["acg_pearson"] < oracle["acg_pearson_ci_high"]
    assert summary.loc["spatial-oracle", "acg_pearson"] > summary.loc["colour-ridge", "acg_pearson"] > 0
    # One method among controls: nothing to rank it against (controls are never ranked).
    assert summary["mean_rank"].isna().all()


def test_evaluate_logs_each_jobs_aggregates_to_its_own_mlflow_run(finished):
    out, _ = finished
    evaluation = evaluate_run(out, n_boot=200)
    log_evaluation_to_store(evaluation, out, f"sqlite:///{out / 'mlflow.db'}")
    assert evaluation.settings["mlflow"] == {"jobs": 9, "methods": 3, "missing": 0}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    values = []
    for row in evaluation.per_job.to_dict("records"):
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["stbench.job"] == row["job_key"]
        assert run.data.metrics["eval.acg_mse"] == pytest.approx(row["acg_mse"], rel=1e-12)
        assert run.data.metrics["eval.ari_truth"] == pytest.approx(row["ari_truth"], rel=1e-12)
        values.append(row["acg_mse"])
        if np.isnan(row["acg_pearson"]):
            assert "eval.acg_pearson" not in run.data.metrics  # undefined is never logged as a number
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["stbench.method"] == row["method"]
        method_row = evaluation.per_method.set_index("method").loc[row["method"]]
        assert parent.data.metrics["eval.acg_mse_sd"] == pytest.approx(method_row["acg_mse_sd"], rel=1e-12)
        if row["method"] != "mean":  # patient-level aggregates, with the interval across the 3 patients
            for name in ("patient_acg_pearson", "patient_acg_pearson_ci_low", "patient_hvg_pearson_sd"):
                assert parent.data.metrics[f"eval.{name}"] == pytest.approx(method_row[name], rel=1e-12)
        assert parent.data.metrics["eval.n_patients"] == 3
    assert len(set(values)) == 9, "every job has its own numbers, so a mix-up would show"


def test_clustering_pairwise_and_friedman_tables(finished):
    out, _ = finished
    domains = pd.read_parquet(out / "results" / "clustering.parquet")
    assert len(domains) == 3 * 3 * 2 * 2  # jobs x test sections x (prediction, truth)
    assert set(domains["reference"]) == {"pathology_label"}
    truth = domains[domains["expression"] == "truth"]
    assert truth["ari"].min() >= 0.9
    pred = domains[domains["expression"] == "prediction"].groupby("method")["ari"].mean()
    assert pred["mean"] == 0 and pred["spatial-oracle"] > 0.5
    pairwise = pd.read_parquet(out / "results" / "pairwise.parquet")
    assert len(pairwise) == 3
    oracle_vs_ridge = pairwise[(pairwise["method_a"] == "spatial-oracle") & (pairwise["method_b"] == "colour-ridge")]
    assert oracle_vs_ridge["share_improved"].iloc[0] > 0.5 and oracle_vs_ridge["p_bh"].iloc[0] < 0.05
    with_mean = pairwise[pairwise["method_a"] == "mean"]
    assert (with_mean["n_dropped_undefined"] == 40).all() and with_mean["p_value"].isna().all()
    friedman = json.loads((out / "results" / "friedman.json").read_text())
    assert friedman["excluded_methods"] == ["mean"] and friedman["p_value"] is None  # two methods are too few
    assert friedman["unit"] == "patient" and friedman["n_blocks"] == 3
    # Patient-level tables: the synthetic data has 3 patients x 2 sections, one patient per lopo fold.
    sections = pd.read_parquet(out / "results" / "per_section.parquet")
    assert len(sections) == 9 * 2 and set(sections["patient"]) == {"P", "Q", "R"}
    per_patient = pd.read_parquet(out / "results" / "per_patient.parquet")
    assert len(per_patient) == 3 * 3 and (per_patient["n_sections"] == 2).all()
    mean_of_sections = sections.groupby(["method", "patient"])["acg_pearson"].mean()
    assert np.allclose(per_patient.set_index(["method", "patient"])["acg_pearson"].dropna(),
                       mean_of_sections.dropna().reindex(per_patient.set_index(["method", "patient"])["acg_pearson"]
                                                         .dropna().index))
    pairs = pd.read_parquet(out / "results" / "patient_pairwise.parquet")
    ranked = [m for m in stats.METRICS if stats.higher_is_better(m) is not None]
    assert len(pairs) == 3 * len(stats.GENE_SETS) * len(ranked)  # pairs x gene sets x ranked metrics
    oracle = pairs[(pairs["method_a"] == "spatial-oracle") & (pairs["method_b"] == "colour-ridge")
                   & (pairs["gene_set"] == "acg") & (pairs["metric"] == "pearson")].iloc[0]
    assert oracle["n_patients"] == 3 and oracle["n_a_better"] == 3 and oracle["p_value"] == pytest.approx(0.25)
    assert oracle["p_min"] == pytest.approx(0.25) and 0 < oracle["ci_low"] < oracle["mean_difference"]
    assert (pd.read_parquet(out / "results" / "per_fold.parquet")["n_seeds"] == 1).all()


def _fake_job(out, method, fold, truth, pred, labels, with_train_stats=True):
    genes = [f"g{j}" for j in range(truth.shape[1])]
    key = JobKey("toy", TOY, fold, method, 0)
    result = {"job": key.record(),
              "job_key": str(key), "kind": "method", "mlflow_run_id": None,
              "timing": {"fit_seconds": 1.0, "predict_seconds": 0.5}, "facts": {"pretrained": False}}
    writers = {
        "predictions.npz": lambda p: np.savez_compressed(
            p, prediction=pred, truth=truth, genes=np.array(genes), spot_ids=np.arange(len(truth)).astype(str),
            section_ids=np.array(["s"] * len(truth)), pathology_label=labels, cluster_label=labels),
        "train_gene_stats.csv": lambda p: pd.DataFrame(
            {"gene": genes, "train_mean": 0.0, "train_variance": np.arange(len(genes))}).to_csv(p, index=False),
        "result.json": lambda p: p.write_text(json.dumps(result)),
        "config.json": lambda p: p.write_text("{}"), "panel.txt": lambda p: p.write_text("\n".join(genes)),
    }
    assert set(writers) == set(JOB_FILES)
    folder = key.folder(out)
    write_job_folder(folder, "h", writers)
    if not with_train_stats:
        (folder / "train_gene_stats.csv").unlink()
        record = json.loads((folder / "COMPLETE").read_text())
        record["files"].pop("train_gene_stats.csv")
        (folder / "COMPLETE").write_text(json.dumps(record))


def test_evaluate_a_run_folder_without_mlflow_store_ranks_four_methods(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    labels = np.array(["a"] * 30 + ["b"] * 30)
    for fold in range(4):
        truth = rng.normal(0, 1, (60, 60)) + np.where(labels == "a", 2.0, 0.0)[:, None]
        for i, noise in enumerate([0.2, 0.6, 1.5, 4.0]):
            pred = truth + rng.normal(0, noise, truth.shape)
            _fake_job(out, f"m{i}", fold, truth, pred, labels, with_train_stats=not (i == 3 and fold == 0))
    bad = JobKey("toy", TOY, 1, "m3", 0).folder(out) / "config.json"
    bad.write_text('{"edited": true}')  # no longer matches its COMPLETE record: left out
    evaluation = evaluate_run(out, n_boot=200)
    assert "mlflow" not in evaluation.settings and len(evaluation.per_job) == 15
    assert (out / "results" / "friedman.json").is_file()
    friedman = evaluation.friedman
    assert friedman["n_blocks"] == 3 and friedman["average_ranks"] == {"m0": 1.0, "m1": 2.0, "m2": 3.0, "m3": 4.0}
    assert friedman["critical_difference"] == pytest.approx(
        stats.critical_difference(4, 3)) and friedman["p_value"] < 0.05
    assert len(evaluation.pairwise) == 6 and (evaluation.pairwise["p_bh"] < 0.05).all()
    jobs = evaluation.per_job.set_index(["method", "fold"])
    assert np.isnan(jobs.loc[("m3", 0), "hvg_pearson"]) and np.isfinite(jobs.loc[("m3", 2), "hvg_pearson"])
    assert jobs["ari_truth"].eq(1.0).all()
    methods = evaluation.per_method.set_index("method")
    assert methods.loc["m0", "acg_pearson"] > methods.loc["m3", "acg_pearson"]
    assert methods.loc["m3", "n_jobs"] == 3
