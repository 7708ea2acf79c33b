"""Gene panel and prediction targets: one source of truth, computed by the harness for every method.

Panel options (fit on the training sections of each fold only, so the test section never steers it):
  ``hvg:<n>``       the n most highly variable genes (scanpy, Seurat flavour) over the training spots
  ``top-mean:<n>``  the n genes of highest mean normalised expression over the training spots
  ``file:<path>``   one gene symbol per line (e.g. the published 785-gene HER2+ panel)

Target: per spot, counts over the panel genes are scaled to sum to 10,000, then ``ln(1 + x)``
(natural log, as scanpy's ``log1p``). Pearson and Spearman scores do not depend on the log base;
MSE/MAE are in natural-log units everywhere in the suite.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.dataset import DataError

TARGET_SUM = 1e4
PANEL_KINDS = ("hvg", "top-mean", "file")


@dataclass(frozen=True)
class PanelSpec:
    kind: str
    n: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        return f"file:{self.path}" if self.kind == "file" else f"{self.kind}:{self.n}"


def parse_panel(text: str) -> PanelSpec:
    kind, _, arg = text.partition(":")
    if kind not in PANEL_KINDS or not arg:
        raise ValueError(f"gene panel {text!r} not understood; use hvg:<n>, top-mean:<n> or file:<path>")
    if kind == "file":
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: gene panel file not found")
        return PanelSpec(kind, path=path.resolve())
    try:
        n = int(arg)
    except ValueError:
        raise ValueError(f"gene panel {text!r}: {arg!r} is not a whole number") from None
    if n <= 0:
        raise ValueError(f"gene panel {text!r}: the number of genes must be positive")
    return PanelSpec(kind, n=n)


def normalise(counts: np.ndarray) -> np.ndarray:
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


def select_panel(spec: PanelSpec, train_adatas, all_adatas) -> list[str]:
    """Choose the panel from the training sections only; genes must exist in every section of the fold."""
    available = common_genes(all_adatas)
    if spec.kind == "file":
        return _panel_from_file(spec.path, all_adatas)
    if spec.n > len(available):
        raise ValueError(f"panel {spec} asks for {spec.n} genes but the sections share only {len(available)}")
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
    for a in all_adatas:
        missing = [g for g in genes if g not in a.var_names]
        if missing:
            section = a.uns.get("section_id", "?")
            more = " ..." if len(missing) > 10 else ""
            raise DataError(f"{path}: unknown gene(s) {', '.join(missing[:10])}{more} ({len(missing)} of the "
                            f"panel's {len(genes)} genes are not in section {section})")
    return genes


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
