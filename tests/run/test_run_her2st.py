"""End to end on the real her2st subset: one `bench run` (lopo, quick profile) with the controls, the
linear probe, mclSTExp and ST-Net, shared by the tests below. The deep methods train 2 epochs (about
a minute and a half on 2 idle CPU cores)."""
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import PANEL_785, SHARED_DATA, needs_her2st

from bench.cli import main

pytestmark = [pytest.mark.integration, needs_her2st]
METHODS = ["mean", "linear-probe", "mclstexp", "st-net"]
EPOCHS = 2  # two, so the per-epoch curves have more than one step


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("her2st") / "runs"
    # 64 px patches (the deep methods' quick size) keep the linear probe's CPU feature pass short; the deep
    # methods run their quick profile for EPOCHS epochs (short training: CI time; what is checked here does not
    # need the full 8). ST-Net
    # predicts once, not over its 8 test-time symmetries (~30 s of CI time; the synthetic method tests run them).
    # The published 785-gene panel where the development data has it; else (data from the user cache, which
    # has no panel file) the 785 most expressed genes: the same size, which is what is checked below.
    panel = f"file:{PANEL_785}" if PANEL_785.is_file() else "top-mean:785"
    code = main(["run", "--methods", ",".join(METHODS), "--data-dir", str(SHARED_DATA), "--panel",
                 panel, "--out", str(out), "--profile", "quick",
                 "--set", "linear-probe.patch_px=64", "--set", f"mclstexp.epochs={EPOCHS}",
                 "--set", f"st-net.epochs={EPOCHS}", "--set", "st-net.tta=false", "--no-progress"])
    assert code == 0
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return out, mlflow.search_runs(experiment_names=["stbench-her2st-lopo"])


def _result(out, method, fold):
    folder = next((out / "jobs" / "her2st").glob("lopo_*")) / method / "seed0" / f"fold{fold}"
    return json.loads((folder / "result.json").read_text())


def test_every_job_completes_on_patient_level_folds(finished_run):
    out, _ = finished_run
    split = json.loads((out / "splits" / "her2st-lopo-seed0.json").read_text())
    assert sorted(tuple(f["test"]) for f in split["folds"]) == [("B4",), ("C2", "C3", "C4", "C5", "C6")]
    per_gene = pd.read_parquet(out / "results" / "per_gene.parquet")
    assert per_gene.groupby(["method", "fold"]).size().eq(785).all()
    assert set(per_gene["method"]) == set(METHODS)
    summary = pd.read_csv(out / "results" / "summary.csv").set_index("method")
    assert summary["n_jobs"].eq(2).all()
    assert np.isnan(summary.loc["mean", "acg_pearson"]) and summary.loc["mean", "n_undefined_pearson"] == 2 * 785
    for method in ("linear-probe", "mclstexp", "st-net"):
        assert np.isfinite(summary.loc[method, ["acg_pearson", "heg_pearson"]].astype(float)).all(), method


def test_mlflow_holds_a_parent_per_method_and_a_nested_run_per_fold(finished_run):
    _, runs = finished_run
    parents = runs[runs["tags.stbench.parent"] == "true"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(parents["tags.stbench.method"]) == sorted(METHODS)
    assert len(children) == 2 * len(METHODS) and (children["status"] == "FINISHED").all()
    assert set(children["tags.profile"]) == {"quick"}
    assert set(children["tags.pretrained"]) <= {"true", "false"}
    assert children["tags.split_sha256"].nunique() == 1


def test_deep_methods_log_profile_losses_and_timing(finished_run):
    out, runs = finished_run
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    client = mlflow.MlflowClient()
    for method in ("mclstexp", "st-net"):
        result = _result(out, method, 0)
        assert result["profile"] == "quick"
        timing = result["timing"]
        assert timing["fit_seconds"] > 0 and timing["predict_seconds"] > 0
        assert timing["train_spots_per_second"] > 0 and timing["predict_spots_per_second"] > 0
        assert timing["peak_rss_mb"] > 0 and timing["device"] == "cpu" and timing["clock"] == "wall"
        assert 0 <= result["facts"]["data_wait_fraction"] < 1
        folder = next((out / "jobs" / "her2st").glob("lopo_*")) / method / "seed0" / "fold0"
        config = json.loads((folder / "config.json").read_text())
        assert config["method_params"]["epochs"] == EPOCHS and config["method_params"]["patch_px"] == 64
        if method == "st-net":
            assert config["method_params"]["tta"] is False  # `--set st-net.tta=false` switched it off
        run_id = children[children["tags.stbench.job"] == result["job_key"]]["run_id"].iloc[0]
        losses = client.get_metric_history(run_id, "train_loss")
        assert [m.step for m in losses] == list(range(EPOCHS))
        logged = client.get_run(run_id).data
        assert logged.params["method.epochs"] == str(EPOCHS)
        assert {"fit_seconds", "train_spots_per_second", "peak_rss_mb", "fact.data_wait_fraction"} <= set(
            logged.metrics)
