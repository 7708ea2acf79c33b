"""Spatial-domain recovery: cluster a section's expression and compare the clusters with annotated domains.

For each test section, KMeans (k = the number of annotated domains, seeded, fixed ``n_init``) runs on the
first ``n_pcs`` principal components of the predicted expression, and the same on the true expression
as a reference. Clusters are scored with ARI and NMI against the pathologist labels where the section
has them, otherwise against the expression-cluster annotation; every number carries the reference used.
Spots whose label is missing, empty or "undetermined" are left out. Pure functions over arrays.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

N_PCS = 9
N_INIT = 10
REFERENCES = ("pathology_label", "cluster_label")  # in order of preference
MISSING_LABELS = frozenset({"", "nan", "none", "undetermined"})


def annotated(labels: np.ndarray) -> np.ndarray:
    """True where a spot carries a usable domain label (not missing, empty or 'undetermined')."""
    text = np.char.lower(np.char.strip(np.asarray(labels, dtype=str)))
    return ~np.isin(text, list(MISSING_LABELS))


def choose_reference(labels: dict[str, np.ndarray]) -> str | None:
    """The first of ``REFERENCES`` with at least two annotated domains in this section (None if none)."""
    for name in REFERENCES:
        values = labels.get(name)
        if values is not None and len(np.unique(np.asarray(values)[annotated(values)])) >= 2:
            return name
    return None


def cluster_expression(expression: np.ndarray, n_clusters: int, n_pcs: int = N_PCS, seed: int = 0,
                       n_init: int = N_INIT) -> np.ndarray:
    """KMeans cluster labels of spots (rows) on the first ``n_pcs`` principal components of ``expression``.

    Expression with no variance (e.g. a constant prediction) has no components: every spot lands in one
    cluster, which scores ARI = 0 against any reference with two or more domains."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(expression, dtype=np.float64)
    x = x[:, x.std(axis=0) > 0]
    n_comp = min(n_pcs, x.shape[1], x.shape[0] - 1)
    if n_comp < 1 or len(x) < n_clusters:
        return np.zeros(len(expression), dtype=np.int64)
    pcs = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit_transform(x)
    with warnings.catch_warnings():  # fewer distinct points than clusters is a legitimate (poor) result
        warnings.simplefilter("ignore")
        return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(pcs).astype(np.int64)


def score_clusters(reference: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": float(adjusted_rand_score(reference, clusters)),
            "nmi": float(normalized_mutual_info_score(reference, clusters))}


def section_domains(expression: dict[str, np.ndarray], labels: dict[str, np.ndarray], n_pcs: int = N_PCS,
                    seed: int = 0, n_init: int = N_INIT) -> list[dict]:
    """Score each expression matrix (e.g. ``{"prediction": ..., "truth": ...}``) of ONE section.

    ``labels`` maps a reference name (``pathology_label``, ``cluster_label``) to per-spot labels.
    Returns one row per expression source; none when the section has no reference with two domains."""
    reference = choose_reference(labels)
    if reference is None:
        return []
    ref = np.asarray(labels[reference], dtype=str)
    keep = annotated(ref)
    k = len(np.unique(ref[keep]))
    rows = []
    for source, values in expression.items():
        clusters = cluster_expression(np.asarray(values)[keep], k, n_pcs=n_pcs, seed=seed, n_init=n_init)
        rows.append({"expression": source, "reference": reference, "n_domains": k, "n_spots": int(keep.sum()),
                     "n_pcs": n_pcs, "cluster_seed": seed, **score_clusters(ref[keep], clusters)})
    return rows


def domain_scores(prediction: np.ndarray, truth: np.ndarray, section_ids: np.ndarray,
                  labels: dict[str, np.ndarray], n_pcs: int = N_PCS, seed: int = 0,
                  n_init: int = N_INIT) -> pd.DataFrame:
    """ARI and NMI of the clusters of predicted and of true expression, per test section."""
    section_ids = np.asarray(section_ids, dtype=str)
    rows = []
    for sid in pd.unique(section_ids):
        at = section_ids == sid
        for row in section_domains({"prediction": prediction[at], "truth": truth[at]},
                                   {k: np.asarray(v)[at] for k, v in labels.items()}, n_pcs, seed, n_init):
            rows.append({"section": sid, **row})
    return pd.DataFrame(rows, columns=["section", "expression", "reference", "n_domains", "n_spots", "n_pcs",
                                       "cluster_seed", "ari", "nmi"])
