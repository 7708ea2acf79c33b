"""Gene panel and prediction targets: one source of truth, computed by the harness for every method.

Panel options (fit on the training sections of each fold only, so the test section never steers it):
  ``hvg:<n>``       the n most highly variable genes (scanpy, Seurat flavour) over the training spots
  ``top-mean:<n>``  the n genes of highest mean normalised expression over the training spots
  (either: every shared gene, with a warning, when the sections share fewer than n)
  ``file:<path>``   one gene symbol per line (e.g. the published 785-gene HER2+ panel)
  ``published``     the dataset's published panel (``Dataset.published_panel``; her2st: the 785 genes of
                    HisToGene, Hist2ST, THItoGene and mclSTExp). It was chosen on all sections, test
                    sections included, so it is NOT fit on training sections; reports say so.

Targets (``TARGETS``; every method trains on and is scored against the chosen one):
  ``per-spot`` (default)  per spot, counts over the panel genes are scaled to sum to 10,000, then
                          ``ln(1 + x)`` (natural log, as scanpy's ``log1p``). A spot's sequencing depth
                          is divided out.
  ``per-gene``            the published target (mclSTExp's code, via scprep): per section, the genes x
                          spots matrix of panel counts has each gene's row scaled to the median row total
                          of that section (``scprep.normalize.library_size_normalize`` on the transposed
                          matrix with rescale="median", its default before scprep 1.0; since 1.0 the
                          default is 10,000), then ``log10(1 + x)`` (``scprep.transform.log``).
                          Each spot keeps its depth, so part of any score is sequencing depth.
  ``per-spot-smoothed``   TRIPLEX's target (``cpm: True, smooth: True``; ``normalize_adata`` in its
                          ``src/utils.py``): the per-spot target, then each spot replaced by the mean over the
                          spots of its section within one array row and one array column (itself included).
                          The held-out truth is smoothed the same way, as in TRIPLEX's evaluation.
Pearson and Spearman scores do not depend on the log base; MSE/MAE are in the target's log units.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.dataset import DataError
from bench.errors import InputError

log = logging.getLogger(__name__)

TARGET_SUM = 1e4
PANEL_KINDS = ("hvg", "top-mean", "file", "published")
TARGETS = ("per-spot", "per-gene", "per-spot-smoothed")
DEFAULT_TARGET = "per-spot"
TARGET_DESCRIPTIONS = {
    "per-spot": "per spot, counts over the panel genes scaled to sum to 10,000, then ln(1 + x)",
    "per-gene": ("per section, each gene's counts (a row of the genes x spots matrix) scaled to the median gene "
                 "total of the section, then log10(1 + x): the published target (mclSTExp, via scprep); it keeps "
                 "each spot's sequencing depth"),
    "per-spot-smoothed": ("the per-spot target averaged over each spot's 3 x 3 array neighbourhood (itself and the "
                          "spots one array row and column away): TRIPLEX's published target"),
}


@dataclass(frozen=True)
class PanelSpec:
    kind: str
    n: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "published":
            return "published"
        return f"file:{self.path}" if self.kind == "file" else f"{self.kind}:{self.n}"


def parse_panel(text: str) -> PanelSpec:
    if text == "published":
        return PanelSpec("published")
    kind, _, arg = text.partition(":")
    if kind not in PANEL_KINDS or not arg:
        raise InputError(f"gene panel {text!r} not understood; use hvg:<n>, top-mean:<n>, file:<path> or published")
    if kind == "file":
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: gene panel file not found")
        return PanelSpec(kind, path=path.resolve())
    try:
        n = int(arg)
    except ValueError:
        raise InputError(f"gene panel {text!r}: {arg!r} is not a whole number") from None
    if n <= 0:
        raise InputError(f"gene panel {text!r}: the number of genes must be positive")
    return PanelSpec(kind, n=n)


def parse_target(text: str) -> str:
    if text not in TARGETS:
        raise InputError(f"unknown target {text!r}; valid targets: {', '.join(TARGETS)}")
    return text


def normalise(counts: np.ndarray, target: str = DEFAULT_TARGET, array_coords: np.ndarray | None = None) -> np.ndarray:
    """The target values of ONE section's spots x panel-genes raw counts (see ``TARGETS``); ``array_coords``
    (n, 2), the spots' integer array positions, for ``per-spot-smoothed``."""
    target = parse_target(target)
    if target == "per-gene":
        return normalise_per_gene(counts)
    if target == "per-spot-smoothed":
        if array_coords is None:
            raise DataError("target per-spot-smoothed needs each spot's array coordinates (array_x, array_y)")
        return smooth_neighbourhood(normalise_per_spot(counts), array_coords)
    return normalise_per_spot(counts)


def smooth_neighbourhood(values: np.ndarray, array_coords: np.ndarray) -> np.ndarray:
    """Each row replaced by the mean of the rows whose array position is within 1 in both coordinates (a 3 x 3
    neighbourhood, the row itself included), as TRIPLEX's ``normalize_adata(smooth=True)``."""
    coords = np.asarray(array_coords, dtype=np.int64)
    index = {tuple(c): i for i, c in enumerate(coords)}
    out = np.empty_like(values, dtype=np.float32)
    for i, (x, y) in enumerate(coords):
        rows = [index[(x + dx, y + dy)] for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (x + dx, y + dy) in index]
        out[i] = values[rows].mean(axis=0)
    return out


def normalise_per_gene(counts: np.ndarray) -> np.ndarray:
    """scprep's ``transform.log(normalize.library_size_normalize(counts.T))``, transposed back: each gene's
    total over the section's spots scaled to the median gene total, then log10(1 + x). Must be given one
    section at a time (the median is the section's)."""
    genes_by_spots = np.asarray(counts, dtype=np.float64).T
    totals = genes_by_spots.sum(axis=1, keepdims=True)
    median = np.median(totals)  # over every gene, all-zero ones included, as scprep does
    # A gene with no counts in the section stays all-zero (scprep's l1 normalisation leaves zero rows as they are).
    scale = np.divide(median, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log10(1.0 + genes_by_spots * scale).T.astype(np.float32)


def normalise_per_spot(counts: np.ndarray) -> np.ndarray:
    """Library-size normalise each spot over the given genes to TARGET_SUM, then ln(1 + x)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    # A spot with no counts over the panel stays all-zero rather than dividing by zero.
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(counts * scale).astype(np.float32)


def common_genes(adatas) -> list[str]:
    """Genes present in every section, in the first section's order."""
    genes = list(adatas[0].var_names)
    shared = set(genes)
    for a in adatas[1:]:
        shared &= set(a.var_names)
    return [g for g in genes if g in shared]


_warned_small: set[tuple[str, int]] = set()  # panels larger than the shared genes, already reported


def select_panel(spec: PanelSpec, train_adatas, all_adatas, published_panel: Path | None = None) -> list[str]:
    """Choose the panel from the training sections only; genes must exist in every section of the fold.
    ``published_panel``: the dataset's published panel file (for ``spec.kind == "published"``)."""
    available = common_genes(all_adatas)
    if spec.kind == "published":
        if published_panel is None:
            raise DataError("--panel published: this dataset ships no published gene panel (its module sets no "
                            "PUBLISHED_PANEL); use hvg:<n>, top-mean:<n> or file:<path>")
        return _panel_from_file(Path(published_panel), all_adatas)
    if spec.kind == "file":
        return _panel_from_file(spec.path, all_adatas)
    if spec.n > len(available):
        # A small dataset under the default panel (synthetic: 40 genes against hvg:250) runs as listed, on
        # every gene it has; said once, so nobody reads the panel's name as its size.
        if (str(spec), len(available)) not in _warned_small:
            _warned_small.add((str(spec), len(available)))
            log.warning("panel %s asks for %d genes but the sections share only %d: the panel is all %d of them",
                        spec, spec.n, len(available), len(available))
    # Normalised over all shared genes, for ranking only; sparse, so tens of thousands of genes over
    # hundreds of thousands of spots never become one dense matrix.
    logged = _normalised_sparse(train_adatas, available)
    if spec.kind == "top-mean":
        score = np.asarray(logged.sum(axis=0, dtype=np.float64)).ravel() / logged.shape[0]
    else:
        score = _dispersion_scores(logged, available)
    # Stable order: best score first, then gene name, so ties never depend on file order.
    order = sorted(range(len(available)), key=lambda i: (-score[i], available[i]))
    return [available[i] for i in order[: spec.n]]


def _dispersion_scores(logged, genes: list[str]) -> np.ndarray:
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    adata = ad.AnnData(X=logged.astype(np.float32), var=pd.DataFrame(index=genes))
    table = sc.pp.highly_variable_genes(adata, flavor="seurat", inplace=False)
    score = table["dispersions_norm"].to_numpy(dtype=float)
    return np.nan_to_num(score, nan=-np.inf)


def _panel_from_file(path: Path, all_adatas) -> list[str]:
    genes = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not genes:
        raise DataError(f"{path}: gene panel file lists no genes")
    duplicated = sorted({g for g in genes if genes.count(g) > 1})
    if duplicated:
        raise DataError(f"{path}: gene(s) listed twice: {', '.join(duplicated[:10])}")
    lacking = {}  # gene -> the sections without it
    for a in all_adatas:
        names = set(a.var_names)
        for g in genes:
            if g not in names:
                lacking.setdefault(g, []).append(str(a.uns.get("section_id", "?")))
    if lacking:
        raise DataError(f"{path}: {panel_gaps(genes, lacking, all_adatas)}")
    return genes


def panel_gaps(genes: list[str], lacking: dict[str, list[str]], all_adatas) -> str:
    """What is wrong with a panel whose genes some sections lack: the genes, which sections lack them (none
    of them, or which), and the names that differ only in case (mouse Mbp, human MBP)."""
    n_sections = len(all_adatas)
    missing = list(lacking)
    more = " ..." if len(missing) > 10 else ""
    nowhere = [g for g in missing if len(lacking[g]) == n_sections]
    somewhere = [g for g in missing if len(lacking[g]) < n_sections]
    where = []
    if nowhere:
        where.append(f"{len(nowhere)} in no section" if n_sections > 1 else f"not in section {lacking[nowhere[0]][0]}")
    if somewhere:
        sections = list(dict.fromkeys(s for g in somewhere for s in lacking[g]))
        where.append(f"{len(somewhere)} missing from section(s) {', '.join(sections[:5])}"
                     f"{' ...' if len(sections) > 5 else ''}")
    text = (f"unknown gene(s) {', '.join(missing[:10])}{more} ({len(missing)} of the panel's {len(genes)} genes: "
            f"{'; '.join(where)})")
    by_case: dict[str, str] = {}
    wanted = {g.lower(): g for g in missing}
    for a in all_adatas:
        for name in map(str, a.var_names):
            if name.lower() in wanted and name != wanted[name.lower()]:
                by_case.setdefault(name.lower(), name)
    near = [(g, by_case[g.lower()]) for g in missing if g.lower() in by_case]
    if near:
        pairs = ", ".join(f"{g} -> {n}" for g, n in near[:5])
        text += (f"; the data name {len(near)} of them in another case ({pairs}{' ...' if len(near) > 5 else ''}): "
                 f"gene symbols are case-sensitive (mouse Mbp, human MBP); write them as the data does")
    return text


def _normalised_sparse(adatas, genes: list[str]):
    """``normalise`` of the sections' counts over ``genes``, stacked, as float32 CSR: the same values
    (normalising and log1p map zeros to zeros, so only stored entries are computed), one section at a time."""
    import scipy.sparse as sp

    parts = []
    for adata in adatas:
        x = sp.csr_matrix(adata[:, genes].X, dtype=np.float64)
        totals = np.asarray(x.sum(axis=1)).ravel()
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        x.data *= np.repeat(scale, np.diff(x.indptr))
        np.log1p(x.data, out=x.data)
        parts.append(x.astype(np.float32))
    return sp.vstack(parts, format="csr")


def panel_counts(adata, genes: list[str]) -> np.ndarray:
    """Dense raw counts (spots x panel genes) for one section."""
    x = adata[:, genes].X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return x.astype(np.float32)
