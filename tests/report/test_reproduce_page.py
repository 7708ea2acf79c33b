"""The reproduce page says what happened in every cell, states each column's folds, and draws the decomposition.

Tiny synthetic job records (result.json + config.json): no training; a mean control that ran in every setting
with an undefined r, a method never run in one setting, a method that ran fewer folds than its column.
"""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from bench.evaluation.cells import NOT_PUBLISHED, NOT_RUN, UNDEFINED, UNDEFINED_FOOTNOTE, score_cell
from bench.evaluation.evaluate import summary_table
from bench.evaluation.reproduce import (
    REPRODUCE_EFFECTS,
    comparison_cells,
    comparison_markdown,
    comparison_tables,
    fold_counts,
    job_scores,
    published_fold_counts,
    reproduce_settings,
    step_captions,
    step_notes,
)
from bench.report.browser import check_in_browser, find_chromium, pixel_spread
from bench.report.decomposition import drawn_rows
from bench.report.reproduce import write_comparison_page

SETTINGS = reproduce_settings(12)
COLUMNS = {f"({label})": s for label, s in SETTINGS.items() if label in "abcd"}  # (t), (u): TRIPLEX only
N_PUBLISHED_FOLDS = 32
# method -> kind and (per setting label) folds run and the score of each fold (None: undefined r)
PLAN = {
    "good": ("method", {"a": (3, 0.5), "b": (2, 0.4), "c": (2, 0.3), "d": (2, 0.2)}),
    "partial": ("method", {"a": (1, 0.45), "b": (2, 0.35)}),  # (c), (d) never run; (a) one fold of three
    "depth-oracle": ("diagnostic-control", {k: (3 if k == "a" else 2, 0.6 - 0.1 * i) for i, k in enumerate("abcd")}),
    "mean": ("negative-control", {k: (3 if k == "a" else 2, None) for k in "abcd"}),  # ran, constant prediction
    "spatial-oracle": ("positive-control", {k: (3 if k == "a" else 2, 0.8) for k in "abcd"}),
}
PUBLISHED = pd.DataFrame([{"dataset": "toy", "method": m, "protocol": "published", "target": "per-gene",
                           "panel": "published", "acg": v, "heg": v + 0.1, "source": "paper"}
                          for m, v in (("good", 0.55), ("partial", 0.5))])


def _jobs(tmp_path) -> pd.DataFrame:
    folders = []
    for method, (kind, plan) in PLAN.items():
        for label, (n_folds, value) in plan.items():
            setting = SETTINGS[label]
            for fold in range(n_folds):
                folder = tmp_path / "jobs" / label / method / f"fold{fold}"
                folder.mkdir(parents=True)
                score = None if value is None else value - 0.01 * fold
                (folder / "result.json").write_text(json.dumps({
                    "job": {"method": method, "seed": 0, "fold": fold}, "kind": kind,
                    "scores": {"mean_pcc": score, "heg_pcc": None if score is None else score + 0.05}}))
                (folder / "config.json").write_text(json.dumps({"benchmark": {
                    "dataset": "toy", "protocol": setting.protocol, "panel": setting.panel,
                    "target": setting.target}}))
                folders.append(folder)
    return job_scores(folders)


@pytest.fixture
def comparison(tmp_path):
    scores = _jobs(tmp_path)
    tables = comparison_tables(scores, COLUMNS, "toy", PUBLISHED, method_order=list(PLAN))
    folds = fold_counts(scores, COLUMNS, "toy")
    of = published_fold_counts(COLUMNS, N_PUBLISHED_FOLDS)
    return tables, folds, of


def test_the_cell_words():
    assert score_cell(0.12345) == "0.123" and score_cell(0.12345, digits=4) == "0.1235"
    assert score_cell(float("nan")) == UNDEFINED == "undefined (constant prediction)"
    assert score_cell(None, ran=False) == NOT_RUN == "not run"
    assert score_cell(float("nan"), published=True) == NOT_PUBLISHED == "not published"
    assert score_cell(0.0, ran=False) == "0.000"  # a number is a number, whatever the flags say


def test_a_control_that_ran_is_never_shown_as_not_run(comparison):
    tables, folds, of = comparison
    for key in ("acg", "heg"):
        headers, rows = comparison_cells(tables[key], folds, of)
        cells = dict(zip(tables[key]["method"], rows))
        assert headers == ["published, 32 folds", "(a) 3 of 32 folds", "(b) 2 folds", "(c) 2 folds", "(d) 2 folds"]
        assert cells["mean"] == [NOT_PUBLISHED] + [UNDEFINED] * 4  # it ran in every setting: r is undefined
        assert cells["depth-oracle"][0] == cells["spatial-oracle"][0] == NOT_PUBLISHED  # no one published those
        assert cells["partial"][3:] == [NOT_RUN, NOT_RUN]  # really not run: (c), (d)
        assert cells["partial"][1].endswith(" (1 of 3 folds)") and cells["partial"][2] == score_cell(
            tables[key].set_index("method").loc["partial", "(b)"])
        assert cells["good"][0] == score_cell(0.55 if key == "acg" else 0.65)
    assert (folds.set_index("method").loc["mean"] == [3, 2, 2, 2]).all()

    text = comparison_markdown(tables, folds, of)
    mean_rows = [line for line in text.splitlines() if line.startswith("| mean |")]
    assert len(mean_rows) == 2 and all(NOT_RUN not in r and r.count(UNDEFINED) == 4 for r in mean_rows)
    assert "| method | published, 32 folds | (a) 3 of 32 folds | (b) 2 folds |" in text


class _Tables(HTMLParser):
    """Each table's rows as lists of cell text, by table id; and every <img> src."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._id, self._cell = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._id = attrs.get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id:
            self.tables[self._id].append([])
        elif tag in ("td", "th") and self._id:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._id][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _page(path):
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_the_page_opens_with_the_decomposition_figure(comparison, tmp_path):
    tables, folds, of = comparison
    path = write_comparison_page(tmp_path / "reproduce.html", "stbench reproduce: toy", tables, ["legend"], [],
                                 folds=folds, of=of, steps=step_captions(SETTINGS))
    html = path.read_text(encoding="utf-8")
    page = _page(path)
    assert html.index('id="decomposition"') < html.index('id="settings-acg"')
    for key in ("acg", "heg"):
        header, *rows = page.tables[f"settings-{key}"]
        assert header[2:4] == ["published, 32 folds", "(a) 3 of 32 folds"]
        mean = next(r for r in rows if r[0] == "mean")
        assert mean[2:] == [NOT_PUBLISHED] + [UNDEFINED] * 4
    # Self-contained: one figure, an inline PNG of both panels, and no address to fetch anything from.
    [src] = page.images
    assert src.startswith("data:image/png;base64,") and not re.search(r"(src|href)=\"(https?:)?//", html)
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        assert image.width > 2 * image.height  # two panels side by side
        png = tmp_path / "figure.png"
        image.save(png)
    assert pixel_spread(png) > 10
    # What it draws: the methods and the two oracles; the mean control (no r anywhere) is said in words.
    assert drawn_rows(tables["acg"]) == (["good", "partial"], ["depth-oracle", "spatial-oracle"])
    assert f"mean: {UNDEFINED}" in html and "removes split" in step_captions(SETTINGS)["(b)"]


def test_a_step_added_to_the_settings_just_renders(comparison, tmp_path):
    """A setting without a caption of its own (another helper's new step) gets its setting as the caption."""
    tables, folds, of = comparison
    extra = {**SETTINGS, "e": SETTINGS["d"]}
    steps = step_captions(extra)
    assert " ".join(steps["(e)"].split()) == SETTINGS["d"].describe()  # no step leads to (e): it is described
    for t in tables.values():
        t["(e)"] = t["(d)"]
    folds = folds.assign(**{"(e)": folds["(d)"]})
    path = write_comparison_page(tmp_path / "p.html", "t", tables, [], [], folds=folds, of=of, steps=steps)
    assert _page(path).tables["settings-acg"][0][-1] == "(e) 2 folds"


def _caption(text: str) -> str:
    return " ".join(text.split())


def test_a_tick_says_what_changed_since_the_column_drawn_before_it():
    """With settings left out, a step's caption composes every step between the columns drawn (issue 41)."""
    def captions(labels):
        return {k: _caption(v) for k, v in step_captions({label: SETTINGS[label] for label in labels}).items()}

    every = captions("abcdtu")
    assert every["(d)"] == "removes the panel chosen on test" and every["(b)"] == "removes split leakage"
    assert every["(t), leaks"].startswith("TRIPLEX's setting") and every["(u)"] == "removes choosing the epoch on test"
    assert captions("ad") == {"(a)": every["(a)"],
                              "(d)": "removes split leakage, depth from the target and the panel chosen on test"}
    assert captions("abd")["(d)"] == "removes depth from the target and the panel chosen on test"
    # Nothing of its chain drawn before it: the column says what it is, never a step that was not drawn.
    assert captions("bd")["(b)"] == SETTINGS["b"].describe() and captions("du")["(u)"] == SETTINGS["u"].describe()
    assert captions("da")["(a)"] == every["(a)"] and captions("da")["(d)"] == SETTINGS["d"].describe()
    assert step_notes(list("ad")) == ["(a) -> (d): what " + ", ".join(REPRODUCE_EFFECTS[k] for k in "bc")
                                      + " and " + REPRODUCE_EFFECTS["d"] + " take away."]
    assert step_notes(list("abcdtu"))[2] == f"(c) -> (d): what {REPRODUCE_EFFECTS['d']} takes away."


def test_the_figure_gets_the_composed_ticks(comparison, tmp_path, monkeypatch):
    """The page for settings a and d only: the ticks handed to the figure are the composed captions, with each
    column's folds. (The figure itself is not drawn: the tests above render it; this one checks what it is given.)"""
    import bench.report.reproduce as page

    tables, folds, of = comparison
    only = ["method", "kind", "published", "(a)", "(d)"]
    tables = {key: t[only] for key, t in tables.items()}
    drawn = {}

    def decomposition(tables, ticks):
        drawn.update(ticks)
        return ""

    monkeypatch.setattr(page, "decomposition", decomposition)
    write_comparison_page(tmp_path / "p.html", "t", tables, [], [], folds=folds[only[:1] + only[3:]], of=of,
                          steps=step_captions({label: SETTINGS[label] for label in "ad"}))
    assert list(drawn) == ["published", "(a)", "(d)"]
    assert _caption(drawn["(d)"]) == "(d) removes split leakage, depth from the target and the panel chosen on " \
                                     "test 2 folds"


def test_summary_csv_and_the_terminal_say_undefined_in_the_same_words():
    from bench.report.terminal import compact_summary

    per_method = pd.DataFrame({
        "method": ["good", "mean"], "kind": ["method", "negative-control"], "n_jobs": [2, 2],
        "acg_pearson": [0.3, np.nan], "acg_pearson_sd": [0.01, np.nan], "heg_pearson": [0.4, np.nan],
        "n_undefined_pearson": [0, 24], "fit_seconds": [1.0, 0.1], "predict_seconds": [0.5, 0.1],
        "pretrained": [True, True], "random_init": [False, False], "hvg_pearson": [0.2, np.nan],
        "acg_pearson_ci_low": [0.2, np.nan], "acg_pearson_ci_high": [0.4, np.nan], "ari_prediction": [0.1, 0.0],
        "dataset": "toy", "protocol": "lopo", "n_patients": [2, 2], "patient_acg_pearson": [0.3, np.nan],
        "patient_heg_pearson": [0.4, np.nan],
        "patient_acg_pearson_ci_low": np.nan, "patient_acg_pearson_ci_high": np.nan})
    summary = summary_table(per_method)
    assert list(summary["acg_pearson_text"]) == ["0.300", UNDEFINED]
    assert list(summary["heg_pearson_text"]) == ["0.400", UNDEFINED]
    terminal = compact_summary(summary)
    mean_line = next(line for line in terminal.splitlines() if line.startswith("mean "))
    assert "undefined*" in mean_line and NOT_RUN not in terminal and UNDEFINED_FOOTNOTE in terminal
    assert max(len(line) for line in terminal.splitlines()[:3]) <= 100


needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="no chromium binary on PATH (Debian: apt-get install chromium)")


@pytest.mark.slow
@needs_chromium
def test_the_reproduce_page_renders_in_chromium(comparison, tmp_path):
    tables, folds, of = comparison
    path = write_comparison_page(tmp_path / "reproduce.html", "stbench reproduce: toy", tables, ["legend"], [],
                                 folds=folds, of=of, steps=step_captions(SETTINGS))
    shot = check_in_browser(path, tmp_path / "reproduce.png")  # raises on a console message or a blank page
    assert shot.console == [] and shot.screenshot.stat().st_size > 20_000
