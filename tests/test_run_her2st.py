"""End to end on the real her2st subset: `bench run` with the controls and the linear probe."""
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from conftest import PANEL_785, SHARED_DATA, needs_her2st

pytestmark = [pytest.mark.integration, needs_her2st]


def test_bench_run_on_her2st_lopo_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    # 112 px patches of the same 165 µm window keep the CPU feature pass short; everything else is default.
    code = main(["run", "--methods", "mean,linear-probe", "--data-dir", str(SHARED_DATA), "--panel",
                 f"file:{PANEL_785}", "--out", str(out), "--set", "linear-probe.patch_px=112", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "4 job(s) run" in printed

    summary = pd.read_csv(out / "results" / "summary.csv").set_index("method")
    assert summary.loc["mean", "n_jobs"] == summary.loc["linear-probe", "n_jobs"] == 2
    assert np.isnan(summary.loc["mean", "mean_pcc"])
    probe = summary.loc["linear-probe", "mean_pcc"]
    assert np.isfinite(probe) and -1 < probe < 1

    split = json.loads((out / "splits" / "her2st-lopo-seed0.json").read_text())
    assert sorted(tuple(f["test"]) for f in split["folds"]) == [("B4",), ("C2", "C3", "C4", "C5", "C6")]
    per_gene = pd.read_parquet(out / "results" / "per_gene.parquet")
    assert per_gene.groupby(["method", "fold"]).size().eq(785).all()

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stbench-her2st-lopo"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(runs) == 6 and len(children) == 4
    assert (children["status"] == "FINISHED").all()
    assert set(children["tags.pretrained"]) <= {"true", "false"}
