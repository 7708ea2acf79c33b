"""``bench reproduce`` on a small synthetic dataset that declares a published setting: four settings into one
resumable run folder, and the comparison table built from them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.evaluation.reproduce import (
    Setting,
    comparison_tables,
    job_scores,
    published_run_differences,
    reproduce_settings,
)
from bench.registry import clear_caches

DATASET = '''
"""Synthetic data with a declared published setting (test plug-in)."""
from pathlib import Path

from bench.registry import get_dataset_module

NAME = "synthpub"
PUBLISHED_SECTIONS = ("P1", "P2", "Q1")  # Q2 is never a published section
PUBLISHED_PANEL = Path(__file__).with_name("synthpub_panel.txt")
PUBLISHED_RESULTS = Path(__file__).with_name("synthpub_published.csv")


def load(root=None):
    dataset = get_dataset_module("synthetic").load(n_patients=2, sections_per_patient=2, grid=8, n_genes=16,
                                                   n_planted=6)
    dataset.name = NAME
    dataset.published_sections = PUBLISHED_SECTIONS
    dataset.published_panel = PUBLISHED_PANEL
    return dataset
'''

METHOD = '''
"""A method without images (test plug-in): least squares of each gene on the spot's array position."""
import numpy as np

from bench.method import Method


class Position(Method):
    name = "position"
    description = "least squares on array x, y"

    def __init__(self):
        pass

    def fit(self, train):
        x = np.c_[np.ones(len(train)), train.array_coords]
        self.coef_ = np.linalg.lstsq(x, train.expression, rcond=None)[0]
        return self

    def predict(self, test):
        return np.c_[np.ones(len(test)), test.array_coords] @ self.coef_
'''

PUBLISHED = """# test
dataset,method,protocol,target,panel,acg,heg,source
synthpub,position,published,per-gene,published,0.4321,0.5432,"test paper, table 9"
synthpub,position,lopo,per-spot,hvg:99,0.1111,0.2222,"a row in no setting of the run"
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "synthpub.py").write_text(DATASET)
    (folder / "position.py").write_text(METHOD)
    (folder / "synthpub_panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(12)) + "\n")
    (folder / "synthpub_published.csv").write_text(PUBLISHED)
    monkeypatch.setenv("STBENCH_DATASETS_PATH", str(folder))
    monkeypatch.setenv("STBENCH_METHODS_PATH", str(folder))
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    clear_caches()
    yield folder
    clear_caches()


@pytest.mark.slow
def test_reproduce_runs_four_settings_into_one_folder_and_compares_them(plugins, tmp_path, monkeypatch):
    from bench.pipeline import reproduce
    from bench.run.config import BenchConfig

    out = tmp_path / "repro"
    # A file store: MLflow's SQLite store takes ~20 s to create on a busy machine (its migrations).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    base = BenchConfig(methods=["position"], dataset="synthpub", out=str(out), profile="quick", progress=False,
                       pretrained="no", tracking_uri=(tmp_path / "mlruns").as_uri()).resolved()
    done = reproduce(base)

    settings = reproduce_settings(12)
    assert settings["d"] == Setting("lopo", "hvg:12", "per-spot")  # as many HVGs as the published panel
    # (t) and (u) run only methods whose published run chose its epoch on the test fold: none here.
    assert not (out / "settings" / "t").exists() and not (out / "settings" / "u").exists()
    for label in "abcd":
        setting = settings[label]
        folder = out / "settings" / label
        summary = pd.read_csv(folder / "results" / "summary.csv")
        assert set(summary["method"]) == {"position", "depth-oracle", "mean", "spatial-oracle"}
        job = next((folder / "jobs").rglob("result.json"))
        bench_cfg = json.loads((job.parent / "config.json").read_text())["benchmark"]
        assert (bench_cfg["protocol"], bench_cfg["panel"], bench_cfg["target"]) == (
            setting.protocol, setting.panel, setting.target)
        assert json.loads(job.read_text())["target"] == setting.target
    # (a) is the published protocol: one fold per published section, never Q2.
    split = json.loads(next((out / "settings" / "a" / "splits").glob("*.json")).read_text())
    assert [f["test"] for f in split["folds"]] == [["P1"], ["P2"], ["Q1"]] and split["leaks_patients"]

    acg = done["tables"]["acg"]
    assert list(acg.columns) == ["method", "kind", "published", "(a)", "(b)", "(c)", "(d)"]
    assert list(acg["method"]) == ["position", "depth-oracle", "mean", "spatial-oracle"]  # methods, then controls
    row = acg.set_index("method")
    assert row.loc["position", "published"] == 0.4321  # only the row whose setting is a column
    assert np.isnan(row.loc["depth-oracle", "published"])
    assert done["tables"]["heg"].set_index("method").loc["position", "published"] == 0.5432
    for label in "abcd":
        assert row.loc["spatial-oracle", f"({label})"] > 0.5
        assert np.isfinite(row.loc["depth-oracle", f"({label})"])
        # Each column is that setting's own evaluation: the mean over its folds of each job's ACG.
        summary = pd.read_csv(out / "settings" / label / "results" / "summary.csv").set_index("method")
        assert row.loc["position", f"({label})"] == pytest.approx(summary.loc["position", "pooled_acg_pearson"],
                                                                   abs=1e-6)
    text = (out / "reproduce.md").read_text()
    assert text.startswith("### ACG") and "test paper, table 9" in text and "0.4321" in text
    assert "0.1111" not in text
    assert "Column (a) is not the published experiment" in text and "position ran the quick profile" in text
    saved = pd.read_csv(out / "results" / "reproduce_acg.csv")
    assert list(saved["method"]) == list(acg["method"])
    html = (out / "reproduce.html").read_text()
    assert "settings-acg" in html and "0.432" in html and "published" in html
    # The mean control ran in every setting (constant prediction): its cells say so, never "not run".
    folds = pd.read_csv(out / "results" / "reproduce_folds.csv").set_index("method")
    assert (folds.loc["mean"] > 0).all() and folds.loc["position", "(a)"] == 3  # one fold per published section
    mean_rows = [line for line in text.splitlines() if line.startswith("| mean |")]
    assert mean_rows and all("not run" not in r and r.count("undefined (constant prediction)") == 4
                             and "not published" in r for r in mean_rows)
    assert "| method | published, 3 folds | (a) 3 of 3 folds | (b) 2 folds |" in text
    assert 'id="decomposition"' in html and "data:image/png;base64," in html

    again = reproduce(base)  # resumable: nothing is run twice
    assert all(not r.completed and r.skipped for r in again["results"].values())

    # A plain run folder holding two settings (published and lopo jobs) gets the same comparison.
    import shutil

    from bench.pipeline import compare_settings

    combined = tmp_path / "combined"
    for label in "ab":
        shutil.copytree(out / "settings" / label / "jobs", combined / "jobs", dirs_exist_ok=True)
    (combined / "results").mkdir()
    text = compare_settings(combined, "synthpub")
    both = pd.read_csv(combined / "results" / "settings_acg.csv")
    assert list(both.columns) == ["method", "kind", "published", "lopo / published / per-gene",
                                  "published / published / per-gene"]  # settings in the run folder's order
    assert both.set_index("method").loc["position", "lopo / published / per-gene"] == pytest.approx(
        row.loc["position", "(b)"])
    assert "0.4321" in text and (combined / "settings.html").is_file()
    from bench.report.reproduce import settings_sections

    opening = settings_sections(combined)  # what the run folder's report opens with
    assert [s.id for s in opening] == ["settings-acg", "settings-heg", "settings-legend"]
    assert opening[0].blocks[0].header[2:] == ["published", "lopo / published / per-gene, 2 folds",
                                               "published / published / per-gene, 3 folds"]  # folds per column
    assert compare_settings(out / "settings" / "c", "synthpub") is None  # one setting: nothing to compare


def test_published_numbers_only_beside_their_setting(tmp_path):
    folder = tmp_path / "jobs" / "x"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"job": {"method": "m", "seed": 0, "fold": 0}, "kind": "method",
                                                    "scores": {"mean_pcc": 0.3, "heg_pcc": 0.4}}))
    (folder / "config.json").write_text(json.dumps({"benchmark": {"dataset": "d", "protocol": "lopo",
                                                                  "panel": "hvg:5"}}))  # made before --target
    scores = job_scores([folder])
    assert scores["target"].tolist() == ["per-spot"]
    published = pd.DataFrame([{"dataset": "d", "method": "m", "protocol": "published", "target": "per-gene",
                               "panel": "published", "acg": 0.9, "heg": 0.9, "source": "s"}])
    tables = comparison_tables(scores, {"x": Setting("lopo", "hvg:5", "per-spot")}, "d", published)
    assert "published" not in tables["acg"].columns
    assert tables["acg"].set_index("method").loc["m", "x"] == 0.3


def test_a_published_column_says_how_its_runs_differ_from_the_published_ones():
    """The published number stands beside its setting's column; whatever else differs from the published
    runs (profile, weights, a cap on training spots, folds missing) is said, per method, and nothing is
    said of a run made as published."""
    published = pd.DataFrame([{"dataset": "d", "method": m, "protocol": "published", "target": "per-gene",
                               "panel": "published", "acg": 0.2, "heg": 0.3, "source": "s"} for m in ("a", "b")])
    columns = {"(a)": Setting("published", "published", "per-gene"), "(b)": Setting("lopo", "published", "per-gene")}

    def jobs(method, folds, **how):
        row = {"dataset": "d", "protocol": "published", "panel": "published", "target": "per-gene",
               "validation": "training-patients", "method": method, "kind": "method", "seed": 0, "acg": 0.1, "heg": 0.1, "profile": "paper",
               "imagenet_weights_missing": False, "image_encoder": None, "max_train_spots": None,
               "train_spots_capped": False, **how}
        return [{**row, "fold": f} for f in range(folds)]

    as_published = pd.DataFrame(jobs("a", 4) + jobs("b", 4))
    assert published_run_differences(as_published, published, columns, "d", n_published_folds=4) == []
    # Another setting's jobs (lopo) run any way at all: not the published column's business.
    other = pd.DataFrame(jobs("a", 4) + [{**j, "protocol": "lopo", "profile": "quick"} for j in jobs("a", 2)])
    assert published_run_differences(other, published, columns, "d", n_published_folds=4) == []

    made_here = pd.DataFrame(jobs("a", 2, profile="quick", imagenet_weights_missing=True, max_train_spots=256,
                                  train_spots_capped=True) + jobs("b", 4, image_encoder="timm:vit_small")
                             + jobs("control", 2, profile="quick", kind="control"))
    [note] = published_run_differences(made_here, published, columns, "d", n_published_folds=4)
    assert note.startswith("Column (a) is not the published experiment")
    assert "a ran the quick profile" in note and "a started from random initialisation" in note
    assert "b used a frozen timm:vit_small encoder" in note
    assert "a trained on at most 256 spots" in note and "(a 2;" in note
    assert "control" not in note  # only methods with a published number
    assert published_run_differences(made_here, None, columns, "d", 4) == []  # no published column, no note
    [old_run] = published_run_differences(pd.DataFrame(jobs("a", 4, profile=None)), published, columns, "d", 4)
    assert "a recorded no profile" in old_run and "the  profile" not in old_run
