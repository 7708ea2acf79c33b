"""The tissue sections of the report: expression maps and spatial-domain clusters, as plain data
(``bench.report.blocks``); see ``bench.report.build``."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bench.evaluation import clustering, stats
from bench.evaluation.cells import NOT_RUN
from bench.evaluation.metrics import pearson_per_gene
from bench.report import figures as figures
from bench.report.blocks import Block, Details, Figure, Paragraph, Section, Table
from bench.report.data import RunResults, contenders, distinct, job_coordinates, load_predictions, ranked_methods
from bench.report.formatting import fmt, kind_label
from bench.report.tissue import section_tissue

log = logging.getLogger(__name__)


# ---- maps on the tissue -----------------------------------------------------------------------------------

def map_job(res: RunResults, method: str) -> tuple[int, int]:
    """The (seed, fold) of ``method`` whose ACG r is the median (lower median) of its jobs: representative,
    not its best."""
    jobs = res.per_job[res.per_job["method"] == method].copy()
    jobs["_key"] = jobs["acg_pearson"].astype(float).fillna(-np.inf)
    jobs = jobs.sort_values(["_key", "seed", "fold"], kind="stable")
    row = jobs.iloc[(len(jobs) - 1) // 2]
    return int(row["seed"]), int(row["fold"])


def _job_key(res: RunResults, method: str, seed: int, fold: int) -> str | None:
    hit = res.per_job[(res.per_job["method"] == method) & (res.per_job["seed"] == seed)
                      & (res.per_job["fold"] == fold)]
    return None if hit.empty else hit["job_key"].iloc[0]


def _job_arrays(res: RunResults, method: str, seed: int, fold: int) -> dict | None:
    key = _job_key(res, method, seed, fold)
    if key is None:
        return None
    try:
        return load_predictions(res.jobs[key]["folder"])
    except (OSError, KeyError, ValueError):
        return None


def top_genes(res: RunResults, method: str, n: int, panel: list[str]) -> pd.DataFrame:
    """The method's n genes of ``panel`` with the highest per-gene r averaged over the folds whose panel has
    them (``stats.gene_means``: undefined in any of those folds counts as undefined), and that fold count."""
    rows = res.per_gene[res.per_gene["method"] == method]
    means = stats.gene_means(rows, "pearson").dropna()
    means = means[means.index.isin(panel)].sort_values(ascending=False, kind="stable").head(n)
    folds = rows.groupby("gene", sort=False).size()
    return pd.DataFrame({"gene": means.index, "mean_r": means.to_numpy(), "n_folds": folds.reindex(means.index)})


def _on_tissue(res: RunResults, sid: str, spot_ids) -> tuple[tuple | None, str]:
    """(thumbnail, spot positions on it) of the section's H&E for the figures, or None; and a sentence for
    the page saying which it is."""
    tissue = section_tissue(res.config, sid)
    if isinstance(tissue, str):
        return None, f"Spots at their array positions; the H&E is not drawn: {tissue}."
    at = tissue.positions(spot_ids)
    if at is None:
        return None, f"Spots at their array positions; the H&E is not drawn: the spots of section {sid} in the " \
                     f"results are not those of its data."
    return (tissue.image, at), "Spots on the section's H&E."


def maps_section(res: RunResults, requested: list[str], n_top: int, shared_scale: bool = True) -> Section:
    cands = contenders(res.per_method)
    if cands.empty:
        return Section("maps", "Maps", "On the tissue", [Paragraph("No method with a defined score to map.", "note")])
    shown = cands["method"].iloc[:2].tolist()
    best = shown[0]
    seed, fold = map_job(res, best)
    arrays = _job_arrays(res, best, seed, fold)
    if arrays is None:
        return Section("maps", "Maps", "On the tissue",
                       [Paragraph("Predictions of the mapped job not readable.", "note")])
    sids = np.asarray(arrays["section_ids"], dtype=str)
    counts = pd.Series(sids).value_counts(sort=False)
    sid = str(counts.idxmax())
    at = sids == sid
    xy = job_coordinates(arrays, at)
    panel = [str(g) for g in arrays["genes"]]
    top = top_genes(res, best, n_top, panel)
    genes = list(top["gene"]) + [g for g in requested if g in panel and g not in set(top["gene"])]
    absent = [g for g in requested if g not in panel]
    parts: list[Block] = []
    header = ["Gene", f"{best}: mean r", "Folds"]
    parts.append(Table("top_genes", header, [[r["gene"], fmt(r["mean_r"]), fmt(r["n_folds"], "int")]
                                              for r in top.to_dict("records")],
                       caption=f"Best-predicted genes of {best} (among the genes of the mapped fold's panel): "
                               f"per-gene r averaged over the folds whose panel has the gene"))
    if absent:
        parts.append(Paragraph(f"Not in the gene panel, so not mapped: {', '.join(absent)}.", "note"))
        # Said in the terminal too: the page alone would leave `--genes` looking ignored.
        log.warning("--genes: %s not in the gene panel of the mapped job (panel %s; its genes: %s), so not "
                    "mapped; the genes of a run are fixed by its --panel", ", ".join(absent),
                    res.config.get("panel", "?"), res.jobs[_job_key(res, best, seed, fold)]["folder"] / "panel.txt")
    scale = ("Each gene's panels share one colour scale (the truth's and the predictions' range together), so "
             "a prediction that spans a narrow range looks flat; `bench report --map-scale panel` gives each "
             "panel its own." if shared_scale else
             "Each panel has its own colour scale (`--map-scale panel`), so the pattern of a prediction that "
             "spans a narrow range shows, not its range; `--map-scale shared` compares ranges.")
    intro = (f"Test section {sid} (seed {seed}, fold {fold}: the fold where {best} scores its median ACG r). "
             f"{scale} r is the Pearson r of that gene on this section.")
    if xy is None:
        parts.append(Paragraph("No array coordinates saved with the predictions; no maps.", "note"))
        return Section("maps", "Maps", "On the tissue", parts, intro)
    idx = [panel.index(g) for g in genes]
    truth = arrays["truth"][at][:, idx]
    rows, notes = [("truth", truth)], {}
    for method in shown:
        data = arrays if method == best else _job_arrays(res, method, seed, fold)
        if data is None or not np.array_equal(np.asarray(data["spot_ids"], dtype=str), arrays["spot_ids"].astype(str)):
            continue
        pred = np.asarray(data["prediction"])[at][:, idx]
        r = pearson_per_gene(truth, pred)
        notes.update({(g, method): f"r = {fmt(v)}" for g, v in zip(genes, r)})
        rows.append((method, pred))
    if genes:
        tissue, where = _on_tissue(res, sid, np.asarray(arrays["spot_ids"], dtype=str)[at])
        parts.append(Paragraph(f"Mapped genes: {', '.join(genes)}. {where}"))
        parts.append(Figure(figures.spatial_maps(xy, genes, rows, notes, tissue, shared_scale),
                            "true and predicted expression maps",
                            "Columns: genes (the top genes of the best method, then the requested ones). Rows: true "
                            "expression, then the predictions of the best two methods."))
    return Section("maps", "Maps", "On the tissue", parts, intro)


# ---- spatial domains --------------------------------------------------------------------------------------

def clustering_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    refs = res.per_job.groupby("method")["clustering_reference"].agg(lambda v: ", ".join(distinct(v)) or fmt(None))
    rows = [[r["method"], kind_label(r["kind"]), refs.get(r["method"], fmt(None)), fmt(r["ari_prediction"]),
             fmt(r["nmi_prediction"]), fmt(r["ari_truth"]), fmt(r["nmi_truth"])]
            for r in ranked_methods(res.per_method).to_dict("records")]
    return ["Method", "Kind", "Reference", "ARI (prediction)", "NMI (prediction)", "ARI (truth)", "NMI (truth)"], rows


def section_ari_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    c = res.clustering
    if c.empty:
        return [], []
    pred = c[c["expression"] == "prediction"].groupby(["section", "method"], sort=False)["ari"].mean()
    truth = c[c["expression"] == "truth"].groupby("section", sort=False)["ari"].mean()
    methods = [m for m in res.methods if m in set(c["method"])]
    rows = [[s, fmt(truth.get(s))] + [fmt(pred.loc[(s, m)]) if (s, m) in pred.index else NOT_RUN for m in methods]
            for s in pd.unique(c["section"])]
    return ["Section", "Truth ARI", *methods], rows


def clustering_section(res: RunResults) -> Section:
    header, rows = clustering_rows(res)
    parts: list[Block] = [Table("clustering", header, rows, numeric_from=3,
                   caption="KMeans on the first principal components of predicted and of true expression, k = "
                           "number of annotated domains; mean over test sections and folds. ARI (truth) is how well "
                           "the true expression's own clusters match the domains: a reference, not a ceiling (a "
                           "smoother prediction can match them better).")]
    header, rows = section_ari_rows(res)
    if rows:
        parts.append(Details("ARI per test section", [Table("clustering_sections", header, rows)]))
    cands = contenders(res.per_method)
    if not cands.empty:
        parts += _cluster_maps(res, cands["method"].iloc[0])
    return Section("domains", "Domains", "Spatial domains (ARI / NMI)", parts)


def _cluster_maps(res: RunResults, best: str) -> list[Block]:
    """The cluster maps of the best method's median fold (a figure, or a note saying why not; none when its
    predictions are unreadable)."""
    settings = res.friedman.get("settings", {})
    seed, fold = map_job(res, best)
    arrays = _job_arrays(res, best, seed, fold)
    if arrays is None:
        return []
    sids = np.asarray(arrays["section_ids"], dtype=str)
    sid = str(pd.Series(sids).value_counts(sort=False).idxmax())
    at = sids == sid
    labels = {k: np.asarray(arrays[k], dtype=str)[at] for k in clustering.REFERENCES if k in arrays}
    reference = clustering.choose_reference(labels)
    xy = job_coordinates(arrays, at)
    if reference is None or xy is None:
        gaps = (("fewer than two labelled domains (pathology or cluster labels)", reference is None),
                ("no array coordinates", xy is None))
        lacking = " and ".join(what for what, gone in gaps if gone)
        return [Paragraph(f"Section {sid}: {lacking} in its saved predictions; no cluster maps.", "note")]
    keep = clustering.annotated(labels[reference])
    k = len(np.unique(labels[reference][keep]))
    n_pcs, cseed = int(settings.get("n_pcs", clustering.N_PCS)), int(settings.get("seed", 0))
    n_init = int(settings.get("n_init", clustering.N_INIT))
    scores = res.clustering[(res.clustering["section"] == sid) & (res.clustering["seed"] == seed)
                            & (res.clustering["fold"] == fold)]

    def ari(method, source):
        hit = scores[(scores["method"] == method) & (scores["expression"] == source)]["ari"]
        return f" (ARI {fmt(hit.iloc[0])})" if len(hit) else ""

    truth = np.asarray(arrays["truth"])[at][keep]
    columns = [(f"annotated domains ({reference})", labels[reference][keep]),
               (f"truth clusters{ari(best, 'truth')}", clustering.cluster_expression(truth, k, n_pcs, cseed, n_init))]
    for method in res.methods:
        data = arrays if method == best else _job_arrays(res, method, seed, fold)
        if data is None or not np.array_equal(np.asarray(data["spot_ids"], dtype=str), arrays["spot_ids"].astype(str)):
            continue
        pred = np.asarray(data["prediction"])[at][keep]
        columns.append((f"{method}{ari(method, 'prediction')}",
                        clustering.cluster_expression(pred, k, n_pcs, cseed, n_init)))
    tissue, where = _on_tissue(res, sid, np.asarray(arrays["spot_ids"], dtype=str)[at][keep])
    return [Figure(figures.cluster_maps(xy[keep], columns, tissue), "domain and cluster maps",
                   f"Section {sid} (seed {seed}, fold {fold}): annotated domains, clusters of the true expression "
                   f"and of each method's prediction (colours are arbitrary cluster ids). {where}")]
