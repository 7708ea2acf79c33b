"""One self-contained HTML report of a benchmark run: ``python -m bench report <run-dir>``.

Built from the saved results only (see ``bench.report.data``): every number is formatted from the
results tables with the one formatter ``bench.report.formatting.fmt``. Each section builder returns plain
data (``bench.report.blocks``); ``bench.report.render`` draws them with the Jinja2 template and CSS in
the top-level ``reports/`` folder, escaping every value. Every figure is a PNG embedded as base64, the
CSS is inline, and nothing refers to the network, so the file reads the same offline. The page opens
with who wins, by how much and how sure, then gives the details: scores per method and gene set,
per-gene distributions, pairwise tests and the critical-difference diagram, folds, maps on the tissue,
spatial domains, cost, and provenance.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import figures as figures
from bench.report import maps as maps
from bench.report import sections as sections
from bench.report.blocks import Cards, Figure, Paragraph, Section, Table, Verdict
from bench.report.data import RunResults, contenders, load_results, ranked_methods
from bench.report.formatting import fmt, interval, kind_label, mean_sd
from bench.report.render import render_page

log = logging.getLogger(__name__)
REPORT_NAME = "report.html"
N_TOP_GENES = 4
SETS = (("acg", "ACG"), ("heg", "HEG"), ("hvg", "HVG"))


def pair_row(pairwise: pd.DataFrame, a: str, b: str) -> tuple[dict | None, bool]:
    """The pairwise test of a and b, and whether the table lists it as (a, b) (False: as (b, a))."""
    for flipped, (x, y) in ((False, (a, b)), (True, (b, a))):
        hit = pairwise[(pairwise["method_a"] == x) & (pairwise["method_b"] == y)]
        if len(hit):
            return hit.iloc[0].to_dict(), not flipped
    return None, True


def verdict_section(res: RunResults) -> Section:
    alpha = float(res.friedman.get("settings", {}).get("alpha", res.friedman.get("alpha", 0.05)))
    pm = res.per_method
    cands = contenders(pm)
    controls = ranked_methods(pm)
    controls = controls[controls["kind"] != "method"]
    context = [f"{kind_label(r['kind'])} {r['method']}: ACG r = {fmt(r['acg_pearson'])}"
               + (" (undefined: constant predictions)" if not np.isfinite(r["acg_pearson"]) else "")
               for r in controls.to_dict("records")]
    if cands.empty:
        blocks = [Paragraph("No method has a defined ACG Pearson r, so there is no winner.", "verdict weak")]
        return Section("verdict", "At a glance", "At a glance",
                       blocks + ([Paragraph("; ".join(context))] if context else []))
    best = cands.iloc[0]
    ci = interval(best["acg_pearson_ci_low"], best["acg_pearson_ci_high"])
    lines = [f"Who wins: {best['method']}, mean ACG Pearson r {mean_sd(best['acg_pearson'], best['acg_pearson_sd'])} "
             f"over {fmt(best['n_jobs'], 'int')} fold(s), 95% CI {ci}."]
    cards = [("best method", best["method"]), ("ACG Pearson r", fmt(best["acg_pearson"])), ("95% CI", ci)]
    strong = False
    if len(cands) > 1:
        second = cands.iloc[1]
        row, as_listed = pair_row(res.pairwise, best["method"], second["method"])
        lines.append(f"By how much: ahead of {second['method']} (ACG r {fmt(second['acg_pearson'])}, 95% CI "
                     f"{interval(second['acg_pearson_ci_low'], second['acg_pearson_ci_high'])}) by "
                     f"{fmt(best['acg_pearson'] - second['acg_pearson'])} in mean r.")
        cards.append((f"ahead of {second['method']} by", fmt(best["acg_pearson"] - second["acg_pearson"])))
        if row is not None:
            median = row["median_difference"] if as_listed else -row["median_difference"]
            share = (f"{best['method']} is better on {fmt(row['share_improved'], 'pct')} of genes" if as_listed
                     else f"{second['method']} is better on only {fmt(row['share_improved'], 'pct')} of genes")
            significant = np.isfinite(row["p_bh"]) and row["p_bh"] < alpha
            strong = bool(significant and median > 0)
            lines.append(f"How sure: per gene (averaged over {fmt(row['n_folds'], 'int')} common fold(s)), median "
                         f"Δr = {fmt(median)} and {share}; Wilcoxon signed-rank, BH-adjusted p = "
                         f"{fmt(row['p_bh'], 'p')}, {'significant' if significant else 'not significant'} at "
                         f"alpha = {alpha:g}.")
            cards.append(("BH-adjusted p vs runner-up", fmt(row["p_bh"], "p")))
        overlap = not (best["acg_pearson_ci_low"] > second["acg_pearson_ci_high"])
        lines.append(f"The two 95% CIs {'overlap' if overlap else 'do not overlap'}.")
        ranks, cd = res.friedman.get("average_ranks") or {}, res.friedman.get("critical_difference")
        if best["method"] in ranks and second["method"] in ranks and cd is not None:
            gap = ranks[second["method"]] - ranks[best["method"]]
            lines.append(f"Across folds, average ranks {fmt(ranks[best['method']])} vs {fmt(ranks[second['method']])}"
                         f" (Friedman p = {fmt(res.friedman.get('p_value'), 'p')}); the gap "
                         f"{'exceeds' if gap > cd else 'is within'} the critical difference {fmt(cd)}.")
    else:
        lines.append("It is the only method with a defined score besides the controls.")
    if context:
        lines.append("Controls for scale: " + "; ".join(context) + ".")
    blocks = [Cards(cards), Verdict(lines, strong),
              Figure(figures.forest(ranked_methods(pm)), "ACG Pearson r per method with 95% CI",
                     "Mean ACG Pearson r over folds with its 95% bootstrap CI (genes resampled within each fold). "
                     "Blue: methods; grey: positive control; brown: negative control.")]
    return Section("verdict", "At a glance", "At a glance: who wins, by how much, how sure", blocks)


def summary_rows(res: RunResults) -> tuple[list[str], list[list[str]], list[str]]:
    header = ["Method", "Kind", "Folds"] + [f"{label} r" for _, label in SETS]
    header += ["Undefined r", "Spot r", "Pretrained"]
    rows, classes = [], []
    best = contenders(res.per_method)["method"].iloc[:1].tolist()
    for r in ranked_methods(res.per_method).to_dict("records"):
        row = [r["method"], kind_label(r["kind"]), fmt(r["n_jobs"], "int")]
        for s, _ in SETS:  # a tuple: the CI goes on a second line of the cell
            row.append((mean_sd(r[f"{s}_pearson"], r[f"{s}_pearson_sd"]),
                        interval(r[f"{s}_pearson_ci_low"], r[f"{s}_pearson_ci_high"])))
        row += [fmt(r["n_undefined_pearson"], "int"), fmt(r["spot_pearson"]), fmt(bool(r["pretrained"]))]
        rows.append(row)
        classes.append(" ".join(c for c in (str(r["kind"]), "best" if r["method"] in best else "") if c))
    return header, rows, classes


def summary_section(res: RunResults) -> Section:
    header, rows, classes = summary_rows(res)
    intro = ("Pearson r between predicted and true expression per gene, averaged over the genes of each set, then "
             "over folds (mean ± sd over folds; below it the 95% bootstrap CI over genes). ACG: all panel genes; "
             "HEG: the 50 most highly expressed in the test section; HVG: the 50 most variable in training. "
             "Undefined r: gene scores left out (constant prediction or truth), summed over folds. Spot r: Pearson "
             "r over the panel per spot. Controls are shaded and in italics; the best method is in bold.")
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


def build_report(run_dir: Path, genes: list[str] | None = None, n_top_genes: int = N_TOP_GENES) -> str:
    res = load_results(run_dir)
    parts = [verdict_section(res), summary_section(res), distribution_section(res),
             sections.significance_section(res), sections.folds_section(res),
             maps.maps_section(res, genes or [], n_top_genes), maps.clustering_section(res),
             sections.timing_section(res), sections.provenance_section(res)]
    dataset = res.config.get("dataset") or res.per_method["dataset"].iloc[0]
    protocol = res.config.get("protocol") or res.per_method["protocol"].iloc[0]
    title = f"stbench report: {dataset} / {protocol}"
    subtitle = (f"{len(res.per_method)} method(s), {len(res.per_job)} evaluated job(s); run folder "
                f"{Path(run_dir).resolve().name}")
    return render_page(title, subtitle, parts, sections.footer_text())


def write_report(run_dir: Path, out: Path | None = None, genes: list[str] | None = None,
                 n_top_genes: int = N_TOP_GENES) -> Path:
    """Build the report and write it atomically (default ``<run-dir>/report.html``); returns its path."""
    out = Path(out) if out else Path(run_dir) / REPORT_NAME
    text = build_report(run_dir, genes=genes, n_top_genes=n_top_genes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    log.info("report: %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
