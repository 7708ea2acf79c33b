"""One self-contained HTML report of a benchmark run: ``python -m bench report <run-dir>``.

Built from the saved results only (see ``bench.report.data``): every number is formatted from the
results tables with the one formatter ``bench.report.formatting.fmt``. Each section builder returns plain
data (``bench.report.blocks``); ``bench.report.render`` draws them with the Jinja2 template and CSS in
the top-level ``reports/`` folder, escaping every value. Every figure is a PNG embedded as base64, the
CSS is inline, and nothing refers to the network, so the file reads the same offline. The page opens
with who wins, by how much and how sure, judged on the patients (``bench.report.verdict``), then gives
the details: scores per method and gene set,
per-gene distributions, pairwise tests and the critical-difference diagram, folds, maps on the tissue,
spatial domains, cost, and provenance.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import InputError
from bench.report import MAP_SCALES
from bench.report import figures as figures
from bench.report import maps as maps
from bench.report import metric_matrix as metric_matrix
from bench.report import sections as sections
from bench.report.blocks import Cards, Figure, Paragraph, Section, Table, Verdict
from bench.report.data import RunResults, contenders, load_results, ranked_methods
from bench.report.formatting import fmt, interval, kind_label, pretrained_label, score_spread
from bench.report.render import render_page
from bench.report.reproduce import settings_sections
from bench.report.verdict import MIN_PATIENTS, build_verdict, leak_note, random_init_methods, random_init_note

log = logging.getLogger(__name__)
REPORT_NAME = "report.html"
N_TOP_GENES = 4
SETS = (("acg", "ACG"), ("heg", "HEG"), ("hvg", "HVG"), ("svg", "SVG"))


def verdict_section(res: RunResults) -> Section:
    alpha = float(res.friedman.get("settings", {}).get("alpha", res.friedman.get("alpha", 0.05)))
    unknown = set()
    if "patient_source" in res.per_job:
        rows = res.per_job[res.per_job["patient_source"] == "section (patient unknown)"]
        unknown = {s for sections in rows["test_sections"] for s in str(sections).split(",")}
    found = build_verdict(res.per_method, res.per_patient, res.patient_pairwise, res.pairwise, res.friedman,
                          alpha=alpha, unknown_patients=len(unknown))
    cards, lines = list(found.cards), list(found.lines)
    # Said first, on a card and in the verdict: readers compare these scores with published, pretrained ones.
    note = random_init_note(res.per_method, res.config.get("pretrained"))
    if note:
        cards.insert(0, ("not pretrained (random init)", ", ".join(random_init_methods(res.per_method))))
        lines.insert(0, note)
    leak = leak_note(res.per_method)  # first of all: it changes what every score means
    if leak:
        protocols = ", ".join(dict.fromkeys(str(p) for p in res.per_method["protocol"]))
        cards.insert(0, ("leaks patients", f"yes ({protocols})"))
        lines.insert(0, leak)
    blocks = [Cards(cards)] if cards else []
    blocks += [Verdict(lines, found.claim),
               Figure(figures.forest(ranked_methods(res.per_method), res.per_patient),
                      "ACG Pearson r per method and patient with the interval across patients",
                      "ACG Pearson r of each method on each patient (open dots: per-section r averaged over the "
                      "patient's sections and seeds), the mean over patients (filled) and its 95% interval "
                      "across patients (hierarchical bootstrap; none with fewer than 3 patients). "
                      + colour_legend(res.per_method["kind"]))]
    return Section("verdict", "At a glance", "At a glance: who wins, by how much, how sure", blocks)


def colour_legend(kinds) -> str:
    """What the colours of a figure mean, for the kinds it shows only (no control colours without controls)."""
    from bench.method import KINDS, kind_of

    shown = set(map(str, kinds))
    present = [KINDS[k].legend for k in KINDS if k in shown] + [kind_of(k).legend for k in sorted(shown - set(KINDS))]
    return (present[0][0].upper() + "; ".join(present)[1:] + ".") if present else ""


def _patient_interval(row: dict, column: str, per_patient: pd.DataFrame) -> str:
    """The interval across patients; with too few patients for one, why not and the per-patient values."""
    ci = interval(row.get(f"patient_{column}_ci_low"), row.get(f"patient_{column}_ci_high"))
    few = fmt(row.get(f"patient_{column}")) != fmt(None) and row.get("n_patients", 0) < MIN_PATIENTS
    if ci != fmt(None) or not few:
        return ci
    mine = per_patient.loc[per_patient["method"] == row["method"], column] if len(per_patient) else []
    return f"no CI (< {MIN_PATIENTS} patients): " + ", ".join(fmt(v) for v in mine)


def summary_rows(res: RunResults) -> tuple[list[str], list[list[str]], list[str]]:
    header = ["Method", "Kind", "Patients"] + [f"{label} r" for _, label in SETS]
    header += ["Mean rank", "ACG r pooled", "Undefined r", "Spot r", "Pretrained"]
    rows, classes = [], []
    best = contenders(res.per_method)["method"].iloc[:1].tolist()
    for r in ranked_methods(res.per_method).to_dict("records"):
        row = [r["method"], kind_label(r["kind"]), fmt(r["n_patients"], "int")]
        for s, _ in SETS:  # a tuple: the interval goes on a second line of the cell
            if f"patient_{s}_pearson" not in r:  # results evaluated before this gene set existed
                row.append(fmt(None))
                continue
            row.append(score_spread(r[f"patient_{s}_pearson"], r[f"patient_{s}_pearson_sd"],
                                    _patient_interval(r, f"{s}_pearson", res.per_patient)))
        row.append(fmt(r.get("mean_rank")))
        row.append(score_spread(r["acg_pearson"], r["acg_pearson_sd"],
                                interval(r["acg_pearson_ci_low"], r["acg_pearson_ci_high"])))
        row += [fmt(r["n_undefined_pearson"], "int"), fmt(r["spot_pearson"]), pretrained_label(r)]
        rows.append(row)
        classes.append(" ".join(c for c in (str(r["kind"]), "best" if r["method"] in best else "") if c))
    return header, rows, classes


def summary_section(res: RunResults) -> Section:
    header, rows, classes = summary_rows(res)
    intro = ("ACG/HEG/HVG r: Pearson r between predicted and true expression of each gene within each test "
             "section, averaged over the genes of the set, then over a patient's sections (and seeds), then over "
             "patients: mean ± sd across patients, and below it the 95% interval across patients (hierarchical "
             "bootstrap: patients, then their sections, then their genes; with fewer than 3 patients none, and "
             "the value of each patient instead). "
             "ACG: all panel genes; HEG: the 50 most highly expressed in the test sections; HVG: the 50 most "
             "variable in training; SVG: the 20 with the highest Moran's I in training. Mean rank: over every "
             "metric and gene set (Wang et al. 2025; 1 = best; methods only; see All metrics). "
             "ACG r pooled: r over all test spots of a fold at once (pooling sections mixes "
             "the offsets between them into r), mean ± sd over folds, and below it a 95% CI resampling genes, "
             "which describes these test sections only. Undefined r: gene scores left out (constant prediction or "
             "truth), summed over folds. Spot r: Pearson r over the panel per spot. Controls are shaded and in "
             "italics; the best method is in bold.")
    return Section("summary", "Scores", "Scores per method",
                   [Table("summary", header, rows, row_classes=classes, numeric_from=2),
                    *sections.encoder_section_blocks(res)], intro)


def distribution_section(res: RunResults) -> Section:
    order = ranked_methods(res.per_method)["method"].tolist()
    img = figures.gene_distributions(res.per_gene, order, res.kinds())
    empty = [m for m in order if not np.isfinite(res.per_gene.loc[res.per_gene["method"] == m, "pearson"]).any()]
    blocks = [Figure(img, "per-gene Pearson r per method")]
    if empty:
        blocks.append(Paragraph(f"No defined per-gene r (constant predictions): {', '.join(empty)}.", "note"))
    return Section("genes", "Genes", "Per-gene Pearson r", blocks,
                   "Each gene of each fold is one observation; the lines mark the quartiles.")


def build_report(run_dir: Path, genes: list[str] | None = None, n_top_genes: int = N_TOP_GENES,
                 map_scale: str = "shared") -> str:
    """``map_scale``: "shared" (one colour scale per gene across truth and predictions) or "panel"."""
    if map_scale not in MAP_SCALES:
        raise InputError(f"map scale must be one of {', '.join(MAP_SCALES)}, got {map_scale!r}")
    res = load_results(run_dir)
    # A run folder holding several settings (protocol, panel, target) opens with their comparison.
    parts = settings_sections(run_dir) + [verdict_section(res), summary_section(res),
             metric_matrix.metric_matrix_section(res), distribution_section(res),
             sections.significance_section(res), sections.folds_section(res),
             maps.maps_section(res, genes or [], n_top_genes, map_scale == "shared"), maps.clustering_section(res),
             sections.timing_section(res), sections.provenance_section(res)]
    dataset = res.config.get("dataset") or res.per_method["dataset"].iloc[0]
    protocol = res.config.get("protocol") or res.per_method["protocol"].iloc[0]
    title = f"stbench report: {dataset} / {protocol}"
    subtitle = (f"{len(res.per_method)} method(s), {len(res.per_job)} evaluated job(s); run folder "
                f"{Path(run_dir).resolve().name}")
    return render_page(title, subtitle, parts, sections.footer_text())


def write_report(run_dir: Path, out: Path | None = None, genes: list[str] | None = None,
                 n_top_genes: int = N_TOP_GENES, map_scale: str = "shared") -> Path:
    """Build the report and write it atomically (default ``<run-dir>/report.html``); returns its path."""
    out = Path(out) if out else Path(run_dir) / REPORT_NAME
    text = build_report(run_dir, genes=genes, n_top_genes=n_top_genes, map_scale=map_scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    log.info("report: %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
