"""`bench reproduce`'s step (t) -> (u): the epoch chosen on the test fold, then on training patients."""
from __future__ import annotations

import json

import numpy as np

from bench.evaluation.reproduce import (
    REPRODUCE_STEPS,
    TEST_FOLD_SELECTION,
    comparison_tables,
    job_scores,
    reproduce_settings,
    setting_labels,
    setting_methods,
)


def _job(folder, method, fold, acg, validation, kind="method"):
    folder.mkdir(parents=True)
    bench = {"dataset": "her2st", "protocol": "lopo", "panel": "top-mean:250", "target": "per-spot-smoothed"}
    if validation is not None:
        bench["validation"] = validation
    (folder / "config.json").write_text(json.dumps({"benchmark": bench, "method_params": {}}))
    (folder / "result.json").write_text(json.dumps({
        "job": {"method": method, "seed": 0, "fold": fold}, "kind": kind, "profile": "quick",
        "scores": {"mean_pcc": acg, "heg_pcc": acg + 0.1}, "facts": {},
        "validation_leaks_test": validation == "test-fold"}))
    return folder


def test_triplex_published_setting_is_run_twice_differing_only_in_where_the_epoch_is_chosen():
    settings = reproduce_settings(785)
    t, u = settings["t"], settings["u"]
    assert (t.protocol, t.panel, t.target) == (u.protocol, u.panel, u.target) == TEST_FOLD_SELECTION["triplex"]
    assert (t.validation, u.validation) == ("test-fold", "training-patients")
    assert t.leaks_test and not u.leaks_test and "LEAKS" in t.describe()
    assert ("t", "u") in REPRODUCE_STEPS
    # Only methods whose published run chose its epoch on the test fold run there (the audit found TRIPLEX).
    assert setting_methods("t", ["mclstexp", "st-net", "triplex"]) == ["triplex"]
    assert setting_methods("u", ["mclstexp", "bleep"]) == []
    assert setting_methods("a", ["mclstexp", "triplex"]) == ["mclstexp", "triplex"]


def test_the_two_columns_keep_their_jobs_apart(tmp_path):
    folders = [_job(tmp_path / "t0", "triplex", 0, 0.40, "test-fold"), _job(tmp_path / "t1", "triplex", 1, 0.30,
                                                                            "test-fold"),
               _job(tmp_path / "u0", "triplex", 0, 0.20, "training-patients"),
               _job(tmp_path / "u1", "triplex", 1, 0.10, None)]  # a job from before the field: training patients
    scores = job_scores(folders)
    assert list(scores["validation_leaks_test"]) == [True, True, False, False]
    settings = reproduce_settings(785)
    tables = comparison_tables(scores, {"(t), leaks": settings["t"], "(u)": settings["u"]}, "her2st")
    row = tables["acg"].set_index("method").loc["triplex"]
    assert np.isclose(row["(t), leaks"], 0.35) and np.isclose(row["(u)"], 0.15)
    labels = setting_labels([settings["t"], settings["u"]])
    assert any(label.endswith("epoch on test fold") for label in labels) and len(labels) == 2
