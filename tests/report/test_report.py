"""The HTML report of a run: its numbers are the results tables', it is self-contained and escaped, and it
renders in a real (headless) Chromium without console errors."""
import base64
import hashlib
import html
import io
import json
import re
import shutil
import textwrap
from html.parser import HTMLParser

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_synthetic_with_plugins
from PIL import Image

from bench.cli import main
from bench.evaluation import stats
from bench.pipeline import benchmark
from bench.registry import get_dataset_module
from bench.report.browser import check_in_browser, find_chromium, pixel_spread, screenshot
from bench.report.build import write_report
from bench.report.formatting import fmt, interval, kind_label, mean_sd, score, score_spread
from bench.report.verdict import build_verdict
from bench.run.config import BenchConfig

SCRIPT_GENE = "<script>alert(1)</script>"
METHODS = ["mean", "spatial-oracle", "colour-ridge", "xy-ridge"]
PLUGINS = textwrap.dedent('''
    import numpy as np
    from sklearn.linear_model import Ridge

    from bench.method import Method
    from bench.data.patches import PatchSpec

    class ColourRidge(Method):
        name = "colour-ridge"
        description = "ridge on the mean RGB of each patch"
        def __init__(self, alpha: float = 1.0, patch_px: int = 16):
            self.alpha = alpha
            self.patch_px = patch_px
        def patch_spec(self):
            return PatchSpec(px=self.patch_px)
        def fit(self, train):
            self.model_ = Ridge(alpha=self.alpha).fit(self._x(train), train.expression)
            return self
        def predict(self, test):
            return self.model_.predict(self._x(test))
        @staticmethod
        def _x(data):
            return np.asarray(data.patches, dtype=np.float32).mean(axis=(1, 2)) / 255.0

    class XYRidge(Method):
        name = "xy-ridge"
        description = "ridge on the array coordinates (a weak spatial baseline)"
        def __init__(self):
            pass
        def fit(self, train):
            self.model_ = Ridge(alpha=1.0).fit(train.array_coords.astype(float), train.expression)
            return self
        def predict(self, test):
            return self.model_.predict(test.array_coords.astype(float))
''')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic run (controls and two cheap plug-ins, 3 folds) whose gene GENE000 is named SCRIPT_GENE."""
    synthetic = get_dataset_module("synthetic")
    return run_synthetic_with_plugins(
        tmp_path_factory.mktemp("report"), {"report_plugins.py": PLUGINS}, METHODS,
        load=lambda name, data_dir, options=None: synthetic.load(None, gene_names={"GENE000": SCRIPT_GENE}))


class Page(HTMLParser):
    """Tables (id -> header, rows of cell text; a <br> in a cell is a newline), definition lists, tags, text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self.tags, self.text, self.definitions = {}, [], [], {}
        self._table = self._row = self._cell = self._dt = self._dd = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), {"header": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")
        elif tag == "dt":
            self._dt = []
        elif tag == "dd":
            self._dd = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(("th" if tag == "th" else "td", "".join(self._cell)))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if all(kind == "th" for kind, _ in self._row):
                self._table["header"] = [c for _, c in self._row]
            else:
                self._table["rows"].append([c for _, c in self._row])
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "dt" and self._dt is not None:
            self._last_dt, self._dt = "".join(self._dt), None
        elif tag == "dd" and self._dd is not None:
            self.definitions.setdefault(self._last_dt, "".join(self._dd))
            self._dd = None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self._cell, self._dt, self._dd):
            if part is not None:
                part.append(data)


def _parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def report(run):
    path = write_report(run, genes=[SCRIPT_GENE, "GENE005", "NOT-A-GENE"])
    text = path.read_text(encoding="utf-8")
    return path, text, _parse(text)


def _results(run):
    tables = {n: pd.read_parquet(run / "results" / f"{n}.parquet")
              for n in ("per_method", "per_job", "per_gene", "pairwise", "clustering", "per_patient",
                        "patient_pairwise")}
    tables["friedman"] = json.loads((run / "results" / "friedman.json").read_text())
    return tables


def _ranked(per_method):
    """By the patient-level ACG r: per-section r averaged within each patient, then over patients."""
    return per_method.assign(k=per_method["patient_acg_pearson"].fillna(-np.inf)).sort_values(
        "k", ascending=False, kind="stable")


def _patient_ci(r, column):
    """Three patients: an interval wherever the score is defined."""
    return interval(r[f"patient_{column}_ci_low"], r[f"patient_{column}_ci_high"])


def _expected_tables(run) -> dict[str, list[list[str]]]:
    """Every table of the report, rebuilt here from the results tables, result.json files and the MLflow store."""
    t = _results(run)
    pm, pj, pw, fr, cl = t["per_method"], t["per_job"], t["pairwise"], t["friedman"], t["clustering"]
    methods = METHODS
    out = {}
    def lines(cell):  # a two-line cell as the parsed page reads it
        return "\n".join(cell) if isinstance(cell, tuple) else cell

    out["summary"] = [[r["method"], kind_label(r["kind"]), fmt(r["n_patients"], "int")]
                      + [lines(score_spread(r[f"patient_{s}_pearson"], r[f"patient_{s}_pearson_sd"],
                                            _patient_ci(r, f"{s}_pearson"))) for s in ("acg", "heg", "hvg", "svg")]
                      + [fmt(r["mean_rank"])]
                      + [lines(score_spread(r["acg_pearson"], r["acg_pearson_sd"],
                                            interval(r["acg_pearson_ci_low"], r["acg_pearson_ci_high"])))]
                      + [fmt(r["n_undefined_pearson"], "int"), fmt(r["spot_pearson"]), fmt(r["pretrained"])]
                      for r in _ranked(pm).to_dict("records")]
    out["patient_pairwise"] = [
        [r["gene_set"].upper(), r["method_a"], r["method_b"], fmt(r["n_patients"], "int"), fmt(r["mean_difference"]),
         interval(r["ci_low"], r["ci_high"]), f"{r['n_a_better']} of {r['n_patients']}", fmt(r["p_value"], "p"),
         fmt(r["p_min"], "p"), fmt(r["p_bh"], "p"), "yes" if r["p_bh"] < 0.05 else "no"]
        for r in t["patient_pairwise"].to_dict("records") if r["metric"] == "pearson"]  # the headline's tests
    # The metric matrix of each gene set: every evaluated metric at the patient level, its interval below
    # (3 patients), methods by mean rank (controls, unranked, after them in the patient-level ACG order).
    metrics = fr["settings"]["metrics"]
    by_rank = _ranked(pm).assign(k=lambda d: d["mean_rank"].fillna(np.inf)).sort_values("k", kind="stable")
    for s in ("acg", "heg", "hvg", "svg"):
        rows = []
        for r in by_rank.to_dict("records"):
            ranks = [r[f"rank_{s}_{m}"] for m in metrics if f"rank_{s}_{m}" in r and np.isfinite(r[f"rank_{s}_{m}"])]
            cells = [fmt(np.mean(ranks) if ranks else None)]
            for m in metrics:
                v, lo, hi = (r[f"patient_{s}_{m}{end}"] for end in ("", "_ci_low", "_ci_high"))
                cells.append(fmt(v) + (f"\n{interval(lo, hi)}" if np.isfinite(lo) else ""))
            rows.append([r["method"]] + cells)
        out[f"metric-matrix-{s}"] = rows
    pp = t["per_patient"].set_index(["method", "patient"])
    out["patients"] = [[p, f"{p}1, {p}2"] + [score(pp.loc[(m, p), "acg_pearson"]) for m in methods] for p in "PQR"]
    out["pairwise"] = [[r["method_a"], r["method_b"], fmt(r["n_folds"], "int"), fmt(r["n_genes"], "int"),
                        fmt(r["median_difference"]), fmt(r["mean_difference"]), fmt(r["share_improved"], "pct"),
                        fmt(r["p_value"], "p"), fmt(r["p_bh"], "p"), "yes" if r["p_bh"] < 0.05 else "no"]
                       for r in pw.to_dict("records")]
    ranks = fr["average_ranks"]
    top = min(ranks, key=ranks.get)
    out["ranks"] = [[m, fmt(ranks[m]), fmt(None if m == top else fr["nemenyi_p"][top][m], "p")]
                    for m in sorted(ranks, key=ranks.get)]
    results = {r["job_key"]: json.loads((run / "jobs" / r["job_key"] / "result.json").read_text())
               for r in pj.to_dict("records")}
    mean_job = "synthetic/lopo_top-mean40_per-spot/mean/seed0/fold{}".format
    acg = pj.set_index(["method", "fold"])["acg_pearson"]
    out["folds"] = [["0", str(f), ", ".join(results[mean_job(f)]["test_sections"])]
                    + [score(acg.loc[(m, f)]) for m in methods] for f in range(3)]
    out["jobs"] = [[r["method"], str(r["seed"]), str(r["fold"]), str(r["n_test_spots"]), score(r["acg_pearson"]),
                    score(r["heg_pearson"]), score(r["hvg_pearson"]), fmt(r["spot_pearson"]),
                    str(r["n_undefined_pearson"]), fmt(r["ari_prediction"]), r["mlflow_run_id"]]
                   for r in pj.to_dict("records")]
    best = _ranked(pm[pm["kind"] == "method"])["method"].iloc[0]
    genes = stats.gene_means(t["per_gene"][t["per_gene"]["method"] == best]).dropna()
    out["top_genes"] = [[g, fmt(v), "3"] for g, v in genes.sort_values(ascending=False, kind="stable").head(4).items()]
    out["clustering"] = [[r["method"], kind_label(r["kind"]), "pathology_label", fmt(r["ari_prediction"]),
                          fmt(r["nmi_prediction"]), fmt(r["ari_truth"]), fmt(r["nmi_truth"])]
                         for r in _ranked(pm).to_dict("records")]
    pred, truth = cl[cl["expression"] == "prediction"], cl[cl["expression"] == "truth"]
    out["clustering_sections"] = [
        [s, fmt(truth.loc[truth["section"] == s, "ari"].mean())]
        + [fmt(pred.loc[(pred["section"] == s) & (pred["method"] == m), "ari"].mean()) for m in methods]
        for s in pd.unique(cl["section"])]
    timing = pd.DataFrame([{"method": r["job"]["method"], **r["timing"]} for r in results.values()])
    fit_total = pm.set_index("method")["fit_seconds"]
    out["timing"] = [[m, "cpu", "wall", fmt(g["fit_seconds"].mean(), "s"), fmt(g["predict_seconds"].mean(), "s"),
                      fmt(fit_total[m], "s"), fmt(g["train_spots_per_second"].mean(), "rate"),
                      fmt(g["predict_spots_per_second"].mean(), "rate"), fmt(g["peak_rss_mb"].max(), "mb"), "n/a"]
                     for m, g in ((m, timing[timing["method"] == m]) for m in methods)]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    out["methods"] = []
    for m in methods:
        folder = run / "jobs" / "synthetic" / "lopo_top-mean40_per-spot" / m / "seed0" / "fold0"
        params = json.loads((folder / "config.json").read_text())["method_params"]
        parent = client.get_run(json.loads((folder / "result.json").read_text())["mlflow_run_id"]).data.tags[
            "mlflow.parentRunId"]
        reads_images = json.loads((folder / "config.json").read_text())["patch_spec"] is not None
        out["methods"].append([m, kind_label(pm.set_index("method").loc[m, "kind"]), "no",
                               "its own network, trained" if reads_images else "none (no images)",
                               json.dumps(params, sort_keys=True), parent])
    split = json.loads((run / "splits" / "synthetic-lopo-seed0.json").read_text())
    out["splits"] = [["0", str(f["index"]), ", ".join(f["train"]), ", ".join(f["test"]),
                      str(results[mean_job(f['index'])]["n_train_spots"]),
                      str(results[mean_job(f['index'])]["n_test_spots"])]
                     for f in split["folds"]]
    return out


@pytest.mark.slow
def test_bench_run_writes_the_report(run):
    path = run / "report.html"
    assert path.is_file(), "bench run ends by writing the report"
    assert 50_000 < path.stat().st_size < 3_000_000


@pytest.mark.slow
def test_every_table_value_matches_the_results(run, report):
    _, _, page = report
    expected = _expected_tables(run)
    assert set(page.tables) == set(expected), "every table of the report is checked here"
    for table_id, rows in expected.items():
        assert page.tables[table_id]["rows"] == rows, table_id
    per_method = pd.read_parquet(run / "results" / "per_method.parquet").set_index("method")
    assert per_method.loc["spatial-oracle", "acg_pearson"] > per_method.loc["colour-ridge", "acg_pearson"] > 0
    header = page.tables["summary"]["header"]
    assert header[3].startswith("ACG") and header[4].startswith("HEG") and header[5].startswith("HVG")
    rows = {r[0]: r for r in page.tables["summary"]["rows"]}
    assert rows["mean"][1] == "negative control" and rows["spatial-oracle"][1] == "positive control"


@pytest.mark.slow
def test_headline_and_provenance(run, report):
    _, text, page = report
    per_method = pd.read_parquet(run / "results" / "per_method.parquet")
    best = _ranked(per_method[per_method["kind"] == "method"]).iloc[0]
    words = "".join(page.text)
    t = _results(run)
    # Three patients: no paired test can reach p < 0.25, so no winner is claimed, whatever the gene-level p.
    verdict = build_verdict(t["per_method"], t["per_patient"], t["patient_pairwise"], t["pairwise"], t["friedman"])
    assert not verdict.claim and verdict.n_patients == 3
    assert verdict.lines[0].startswith("Who wins: no winner can be claimed for new patients. "
                                       f"{best['method']} scores highest, mean ACG r {fmt(best['patient_acg_pearson'])}"
                                       " over 3 patients")
    assert "the smallest p attainable with 3 patients is 0.250" in verdict.lines[2]
    for line in verdict.lines:
        assert line in words
    assert "BH-adjusted p" in words and "critical difference" in words
    d = page.definitions
    split_file = run / "splits" / "synthetic-lopo-seed0.json"
    assert d["Split files"] == f"{split_file.name} (sha256 {hashlib.sha256(split_file.read_bytes()).hexdigest()})"
    assert d["Dataset"] == "synthetic" and d["Protocol"] == "lopo" and d["Profile"] == "quick"
    assert d["Pretrained weights (requested)"] == "no" and d["Gene panel"].startswith("top-mean:40: 40 genes")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    run_id = pd.read_parquet(run / "results" / "per_job.parquet")["mlflow_run_id"].iloc[0]
    tags = client.get_run(run_id).data.tags
    assert d["Git commit"] == tags["git_commit"]
    assert d["numpy"] == tags["version.numpy"] and d["torch"] == tags["version.torch"]
    assert "NOT-A-GENE" in words, "a requested gene that is not in the panel is named"


@pytest.mark.slow
def test_report_is_self_contained(report):
    path, text, page = report
    resource_attrs = ("src", "href", "srcset", "poster", "data", "action", "background")
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in resource_attrs and value:
                assert not re.match(r"\s*(https?:)?//", value, re.I), (tag, name, value[:80])
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", text, re.I)
    assert "@import" not in text
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 5  # forest, per-gene distributions, CD diagram, expression maps, cluster maps
    for src in images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()


@pytest.mark.slow
def test_the_page_names_no_web_address(report):
    _, text, _ = report
    assert not re.search(r"https?://", text, re.I)


@pytest.mark.slow
def test_gene_names_are_escaped(report):
    _, text, page = report
    assert SCRIPT_GENE not in text
    assert text.count(html.escape(SCRIPT_GENE)) >= 2  # the panel list and the top genes / requested genes
    assert not any(tag == "script" for tag, _ in page.tags)
    assert SCRIPT_GENE in "".join(page.text), "the name is shown as text"


@pytest.mark.slow
def test_report_command_only_reads_results_and_names_the_command_that_makes_them(run, tmp_path, capsys, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("mlartifacts", "mlflow.db", "report.*"))
    shutil.rmtree(copy / "results")
    assert main(["report", str(copy)]) == 2
    assert f"make it with `python -m bench evaluate {copy}`" in capsys.readouterr().err
    assert not (copy / "results").exists(), "the report evaluates nothing"
    assert main(["evaluate", str(copy)]) == 0
    assert main(["report", str(copy), "--genes", "GENE005,NOT-A-GENE", "--html", str(tmp_path / "r.html")]) == 0
    assert (copy / "results" / "per_method.parquet").is_file() and (tmp_path / "r.html").is_file()
    assert "Report:" in capsys.readouterr().out
    # A requested gene outside the panel is said in the terminal, not only inside the page.
    notice = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "NOT-A-GENE" in r.getMessage()]
    assert notice and "GENE005" not in notice[0] and "top-mean:40" in notice[0] and "panel.txt" in notice[0]
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "results" / "per_method.parquet"),
                                  pd.read_parquet(run / "results" / "per_method.parquet"))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert f"{empty / 'results' / 'per_method.parquet'}: missing" in capsys.readouterr().err


@pytest.mark.slow
def test_a_report_that_cannot_be_drawn_is_exit_1_with_the_results_kept(tmp_path, monkeypatch):
    from bench.cli import describe_error
    from bench.pipeline import ReportNotDrawnError

    def broken(*args, **kwargs):
        raise RuntimeError("planted report failure")

    monkeypatch.setattr("bench.report.build.build_report", broken)
    out = tmp_path / "run"
    with pytest.raises(ReportNotDrawnError, match="planted report failure") as caught:
        benchmark(BenchConfig(methods=["mean"], dataset="synthetic", panel="top-mean:40", out=str(out),
                              progress=False, pretrained="no", folds=[0]).resolved())
    assert (out / "results" / "summary.csv").is_file() and not (out / "report.html").exists()
    assert (out / "run_timing.json").is_file()
    message, code = describe_error(caught.value)
    assert code == 1 and f"retry with `python -m bench report {out}`" in message


needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="no chromium binary on PATH (Debian: apt-get install chromium)")


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_chromium(run, report):
    path, _, _ = report
    shot = check_in_browser(path, run / "report.png")  # kept in the run folder as a CI artifact
    assert shot.console == []
    with Image.open(shot.screenshot) as image:
        assert image.size == (1280, 2000)
    assert pixel_spread(shot.screenshot) > 10


@pytest.mark.slow
@needs_chromium
def test_browser_check_fails_on_a_script_error_and_on_a_blank_page(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><h1>Report</h1><p>text</p>"
                      "<script>notDefinedAnywhere();</script></body></html>")
    run = screenshot(broken, tmp_path / "broken.png")
    assert any("notDefinedAnywhere" in m and "Uncaught" in m for m in run.console), run.console
    with pytest.raises(RuntimeError, match="console message"):
        check_in_browser(broken, tmp_path / "broken.png")

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body style='background:#fff'></body></html>")
    with pytest.raises(RuntimeError, match="looks blank"):
        check_in_browser(blank, tmp_path / "blank.png")


def test_one_formatter_for_every_number():
    assert [fmt(0.12345), fmt(float("nan")), fmt(None), fmt(0.0123, "p"), fmt(2.5e-7, "p"), fmt(0.625, "pct"),
            fmt(3.0, "int"), fmt(0.004, "s"), fmt(12.345, "s"), fmt(12345.6, "rate"), fmt(True)] == \
        ["0.123", "n/a", "n/a", "0.012", "2.5e-07", "62%", "3", "4.0e-03", "12.35", "12,346", "yes"]
    assert mean_sd(0.5, float("nan")) == "0.500" and interval(float("nan"), float("nan")) == "n/a"


def test_synthetic_gene_names_only_rename():
    synthetic = get_dataset_module("synthetic")
    plain, renamed = synthetic.load(None), synthetic.load(None, gene_names={"GENE000": SCRIPT_GENE})
    a, b = plain["P1"].counts, renamed["P1"].counts
    assert list(b.var_names) == [SCRIPT_GENE, *list(a.var_names)[1:]]
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    with pytest.raises(ValueError, match="unknown gene"):
        synthetic.load(None, gene_names={"NOPE": "x"})


RANDOM_INIT_PLUGIN = textwrap.dedent('''
    import numpy as np
    from sklearn.linear_model import Ridge

    from bench.method import Method
    from bench.data.patches import PatchSpec
    from bench.nn.torch_utils import torchvision_backbone

    class TinyCNN(Method):
        """Builds a torchvision backbone as the CNN methods do (ImageNet weights unless --pretrained no), then
        fits a ridge on the mean colour: cheap, and it records what mclSTExp and ST-Net record."""
        name = "tiny-cnn"
        description = "torchvision backbone (built only) + ridge on the mean colour"
        def __init__(self):
            pass
        def patch_spec(self):
            return PatchSpec(px=8)
        def fit(self, train):
            torchvision_backbone("resnet18", self.runtime.pretrained, self.runtime.facts)
            x = np.asarray(train.patches, dtype=np.float32).mean(axis=(1, 2))
            self.model_ = Ridge().fit(x, train.expression)
            return self
        def predict(self, test):
            return self.model_.predict(np.asarray(test.patches, dtype=np.float32).mean(axis=(1, 2)))
''')


@pytest.mark.slow
def test_random_initialisation_is_named_in_the_verdict_the_cards_summary_csv_and_the_terminal(tmp_path):
    """A CNN whose ImageNet weights were not used (here: --pretrained no) is named first in the verdict and on
    the first card, in summary.csv (random_init) and in the terminal's closing lines; a network that needs no
    pretrained weights (the controls) is not."""
    from bench.report.terminal import compact_summary

    run = run_synthetic_with_plugins(tmp_path, {"cnn.py": RANDOM_INIT_PLUGIN}, ["mean", "tiny-cnn"])
    summary = pd.read_csv(run / "results" / "summary.csv").set_index("method")
    assert summary.loc["tiny-cnn", "random_init"] and not summary.loc["mean", "random_init"]
    assert not summary.loc["tiny-cnn", "pretrained"]

    sentence = ("Not pretrained: the image encoder of tiny-cnn started from random initialisation (the run asked "
                "for it with --pretrained no). Published results start from pretrained weights, so these scores "
                "are not comparable with them.")
    page = _parse(write_report(run).read_text(encoding="utf-8"))
    words = "".join(page.text)
    assert sentence in words
    assert "tiny-cnnnot pretrained (random init)" in words, "the first card names the method"
    assert words.index(sentence) < words.index("Who wins")
    assert [r[-1] for r in page.tables["summary"]["rows"] if r[0] == "tiny-cnn"] == ["no: random init"]

    terminal = compact_summary(summary.reset_index(), "no")
    assert terminal.splitlines()[-1] == sentence
    assert max(len(line) for line in terminal.splitlines()[:3]) <= 100
    assert any(line.startswith("tiny-cnn ") and "no: random init" in line for line in terminal.splitlines())


@pytest.mark.slow
def test_report_details_maps_on_the_tissue_captions_and_wrapping(run, report):
    """Maps show the H&E behind the spots and say so; one colour scale per gene unless asked otherwise; the
    truth-clustering ARI is a reference, not a ceiling; the colour legend names only kinds that ran; long
    cells wrap between words."""
    from bench.report.build import colour_legend
    from bench.report.figures import colour_limits, spatial_maps
    from bench.report.tissue import section_tissue

    _, text, page = report
    words = "".join(page.text)
    assert words.count("Spots on the section's H&E.") == 2  # the expression maps and the cluster maps
    assert "Each gene's panels share one colour scale" in words and "ceiling" not in words.replace(
        "not a ceiling", "")
    assert colour_legend(["method", "method"]) == "Blue: methods."
    assert colour_legend(["method", "negative-control"]) == "Blue: methods; brown: negative control."
    css = (REPO / "reports" / "report.css").read_text()
    assert "break-all" not in css and "word-break" not in css, "words are never split mid-word to fit a cell"

    # The thumbnail is the section's own image around its spots, and the spots land on it where they are.
    config = json.loads((run / "config.json").read_text())
    tissue = section_tissue(config, "P1")
    image = get_dataset_module("synthetic").load(None)["P1"].image.read()
    x0, y0 = map(int, tissue.origin)
    assert np.array_equal(tissue.image, image[y0::tissue.step, x0::tissue.step][:tissue.image.shape[0],
                                                                                   :tissue.image.shape[1]])
    spot = next(iter(tissue.pixel_xy))
    assert np.allclose(tissue.positions([spot])[0] * tissue.step + tissue.origin, tissue.pixel_xy[spot])
    assert section_tissue({**config, "data_dir": "/nonexistent", "dataset": "her2st"}, "B4").startswith(
        "the run's data could not be read")

    # A red tissue shows in the figure; a shared scale spans truth and prediction together.
    xy = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 255
    rows = [("truth", np.array([[0.0], [2.0], [4.0], [6.0]])), ("m", np.array([[2.8], [3.0], [3.2], [3.4]]))]

    def red_share(png):
        with Image.open(io.BytesIO(base64.b64decode(png))) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        return ((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).mean()

    assert red_share(spatial_maps(xy, ["G"], rows, tissue=(red, xy * 20 + 10))) > 0.05
    assert red_share(spatial_maps(xy, ["G"], rows)) == 0
    assert colour_limits([rows[0][1], rows[1][1]]) == (0.0, 6.0)


@pytest.mark.slow
def test_map_scale_per_panel_is_an_option_and_says_so(run, tmp_path):
    path = write_report(run, out=tmp_path / "panel.html", map_scale="panel")
    assert "Each panel has its own colour scale" in "".join(_parse(path.read_text(encoding="utf-8")).text)
    with pytest.raises(ValueError, match="map scale must be one of shared, panel"):
        write_report(run, out=tmp_path / "x.html", map_scale="log")
