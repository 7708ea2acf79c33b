"""Method kinds are one vocabulary (bench.method.KINDS) that the terminal, the figures and the report read."""
import pandas as pd

from bench.method import KINDS, kind_of
from bench.registry import method_catalogue
from bench.report.build import colour_legend
from bench.report.figures import KIND_COLOURS
from bench.report.formatting import kind_label
from bench.report.terminal import compact_summary


def test_every_registered_methods_kind_is_in_the_vocabulary():
    kinds = {info.kind for info in method_catalogue().values()}
    assert "diagnostic-control" in kinds and kinds <= set(KINDS)


def test_terminal_figures_and_report_name_each_kind_their_own_way():
    assert len({k.colour for k in KINDS.values()}) == len(KINDS)  # depth-oracle is no longer drawn as a method
    assert KIND_COLOURS["diagnostic-control"] != KIND_COLOURS["method"]
    assert kind_label("diagnostic-control") == "diagnostic control"
    assert "purple: diagnostic control" in colour_legend(pd.Series(["method", "diagnostic-control"]))
    assert kind_of("diagnostic-control").short == "diag. control" and not kind_of("diagnostic-control").is_method
    assert kind_of("my-kind").label == "my-kind"  # a plug-in's own kind is shown under its name


def test_terminal_table_names_the_diagnostic_control_and_stays_within_100_columns():
    summary = pd.DataFrame([
        {"method": "a-rather-long-method-name-x", "kind": "method", "acg_pearson": 0.4567, "acg_pearson_sd": 0.0123,
         "heg_pearson": 0.5, "mean_rank": 1.5, "fit_seconds": 12345.6, "predict_seconds": 1.0,
         "pretrained": True, "random_init": False},
        {"method": "depth-oracle", "kind": "diagnostic-control", "acg_pearson": 0.3, "acg_pearson_sd": 0.1,
         "heg_pearson": 0.2, "mean_rank": float("nan"), "fit_seconds": 1.0, "predict_seconds": 1.0,
         "pretrained": False, "random_init": False}])
    text = compact_summary(summary)
    assert "diag. control" in text and "1.5" in text
    assert max(len(line) for line in text.splitlines()) <= 100
