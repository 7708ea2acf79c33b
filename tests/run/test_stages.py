"""The stages hand results down: each method is built once per job and nowhere else (the plan builds none), a job's folder
is written before any metric runs (a failing plug-in metric costs its column, never a training), and a run
folder's job folders live under their setting's name (the layout before settings is refused, with the fix)."""
from __future__ import annotations

import functools
import json
import logging
import subprocess
from collections import Counter

import numpy as np
import pytest

from bench.evaluation import metric_registry
from bench.pipeline import benchmark
from bench.records import COMPLETE, OldLayoutError, Setting, find_job_folders, write_job_folder
from bench.registry import get_method_class
from bench.run.config import BenchConfig


def test_each_method_is_built_once_per_job_and_a_failing_metric_costs_only_its_column(tmp_path, monkeypatch,
                                                                                        caplog):
    built = Counter()
    cls = get_method_class("spatial-oracle")
    init = cls.__init__

    @functools.wraps(init)  # keeps the signature the parameter declarations are read from
    def counting(self, *args, **kwargs):
        built[cls.name] += 1
        init(self, *args, **kwargs)

    def exploding(truth, pred):
        raise ZeroDivisionError("planted metric bug")

    monkeypatch.setattr(cls, "__init__", counting)
    monkeypatch.setitem(metric_registry._REGISTRY, "exploding", metric_registry.Metric("exploding", exploding, "gene",
                                                                                       True, origin="test plug-in"))
    def report(out):  # drawing the page is not under test here
        (out / "report.html").write_text("stand-in")
        return out / "report.html"

    monkeypatch.setattr("bench.report.build.write_report", report)
    out = tmp_path / "run"
    config = BenchConfig(methods=["spatial-oracle"], dataset="synthetic", panel="top-mean:20", out=str(out),
                         progress=False, pretrained="no", folds=[0, 1]).resolved()
    assert not built  # the plan checks the parameters without building the method
    with caplog.at_level(logging.WARNING, logger="bench.evaluation.evaluate"):
        result = benchmark(config)
    assert result.ok and len(result.completed) == 2
    assert built == {"spatial-oracle": 2}  # one per job (2 folds); nowhere else

    # Every job folder was written before the broken metric could run; the evaluation names it and goes on.
    assert len(find_job_folders(out)) == 2
    assert any("metric exploding failed: ZeroDivisionError: planted metric bug" in r.getMessage()
               for r in caplog.records)
    friedman = json.loads((out / "results" / "friedman.json").read_text())
    assert list(friedman["settings"]["failed_metrics"]) == ["exploding"]
    assert "exploding" not in friedman["settings"]["metrics"] and "pearson" in friedman["settings"]["metrics"]
    assert np.isfinite(result.summary.set_index("method").loc["spatial-oracle", "acg_pearson"])

    # A rerun with every job complete builds nothing.
    built.clear()
    again = benchmark(config)
    assert again.up_to_date and len(again.skipped) == 2 and not again.completed and not built


def test_a_setting_has_one_short_stable_name():
    assert Setting("lopo", "hvg:250").name == "lopo_hvg250_per-spot"
    assert Setting("patient-kfold:5", "top-mean:40", "per-gene").name == "patient-kfold5_top-mean40_per-gene"
    assert Setting("lopo", "top-mean:250", "per-spot-smoothed", "test-fold").name == \
        "lopo_top-mean250_per-spot-smoothed_valtest"
    panel = Setting("loso", "file:/data/my_genes.txt").name
    assert panel.startswith("loso_file-my-genes-") and panel == Setting("loso", "file:/data/my_genes.txt").name
    assert panel != Setting("loso", "file:/other/my_genes.txt").name  # same stem, another file


def test_a_run_folder_of_the_layout_before_settings_is_refused_with_the_commands_that_migrate_it(tmp_path):
    old = tmp_path / "jobs" / "toy" / "lopo" / "mean" / "seed0" / "fold0"
    benchmark_config = {"dataset": "toy", "protocol": "lopo", "panel": "hvg:20"}  # made before --target
    write_job_folder(old, "hash", {
        "predictions.npz": lambda p: np.savez_compressed(p, prediction=np.zeros((2, 2))),
        "train_gene_stats.csv": lambda p: p.write_text("gene\n"),
        "result.json": lambda p: p.write_text("{}"),
        "config.json": lambda p: p.write_text(json.dumps({"benchmark": benchmark_config})),
        "panel.txt": lambda p: p.write_text("a\nb\n"),
    })
    with pytest.raises(OldLayoutError, match="before the setting was part of their path") as refused:
        find_job_folders(tmp_path)
    commands = str(refused.value).split("then rerun: ", 1)[1]
    subprocess.run(commands, shell=True, check=True)
    moved = tmp_path / "jobs" / "toy" / "lopo_hvg20_per-spot" / "mean" / "seed0" / "fold0"
    assert find_job_folders(tmp_path) == [moved] and (moved / COMPLETE).is_file()
