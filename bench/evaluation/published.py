"""The published benchmarks' scores, each computed as its authors' code computes it, vectorised over genes.

Sources (read from the public repositories, re-implemented here; no code copied):

- Wang et al. 2025, Nat. Commun. 16:1544 (SydneyBioX/HEtoSGEBench): ``benchmark pipeline/benchmarkUtils.R``
  defines the functions, ``benchmark pipeline/00-CombineDat.Rmd`` ("Calculate metrics") calls them per gene
  and image (section) on the normalised expression, and the AUCs on the original counts.
- SpaRED (BCV-Uniandes/SpaRED): ``spared/spared/metrics/metrics.py``, ``pearsonr_patch`` and
  ``r2_score_cols`` (gene-wise and patch-wise).
- Moran's I (Moran 1950) of the prediction and of the truth on the section's spot graph.

Every function takes ``(n_spots, n_genes)`` arrays and returns one value per gene (or per spot); a value
that the formula leaves undefined (zero variance, an empty class, zero entropy) is NaN, never 0.
"""
from __future__ import annotations

import numpy as np

AUC_CUTOFFS = (0, 1, 2, 5, 7, 10, 20)  # 00-CombineDat.Rmd: auc_0 ... auc_20
SSIM_LEVELS = 256  # benchmarkUtils.R calculate_SSIM(numBreaks = 256)


def _pair(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must be the same (spots, genes) shape")
    return t, p


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or not finite (an undefined score, not an infinity)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    ok = np.isfinite(den) & (den != 0)
    out[ok] = num[ok] / den[ok]
    return out


# ---- HEtoSGEBench (benchmarkUtils.R) ------------------------------------------------------------------------

def rmse(truth, pred) -> np.ndarray:
    """00-CombineDat.Rmd: ``rmse = sqrt(sum((pred - exprs)^2) / n())``."""
    t, p = _pair(truth, pred)
    return np.sqrt(((p - t) ** 2).mean(axis=0))


def nrmse_range(truth, pred) -> np.ndarray:
    """benchmarkUtils.R ``calculate_nrmse(method = "range")``: RMSE / (max - min) of the truth.
    Undefined (R gives Inf or NaN) where the truth is constant."""
    t, p = _pair(truth, pred)
    return _divide(rmse(t, p), t.max(axis=0) - t.min(axis=0)) if len(t) else np.full(t.shape[1], np.nan)


def nrmse_sd(truth, pred) -> np.ndarray:
    """benchmarkUtils.R ``calculate_nrmse(method = "sd")``: RMSE / sd of the truth (R's ``sd``, n - 1).
    Undefined where the truth is constant or there is one spot."""
    t, p = _pair(truth, pred)
    sd = t.std(axis=0, ddof=1) if len(t) > 1 else np.full(t.shape[1], np.nan)
    return _divide(rmse(t, p), sd)


def _equal_frequency_bins(x: np.ndarray, nbins: int) -> np.ndarray:
    """infotheo ``discretize(disc = "equalfreq")`` (its C routine ``discEF``), for every column at once.

    Sorted values, freq = N %/% nbins, mod = N %% nbins; split point i is sorted[k + 1] while mod lasts
    (then mod decreases), else sorted[k], with k starting at freq - 1 and growing by freq; the last split is
    max + 0.01. A value's bin is the first split it does not exceed (0-based here)."""
    n = len(x)
    srt = np.sort(x, axis=0)
    freq, mod = divmod(n, nbins)
    rows, k = [], freq - 1
    for _ in range(nbins - 1):  # nbins - 1 split points, the same rows for every gene
        if mod > 0:
            rows.append(k + 1)
            mod -= 1
        else:
            rows.append(k)
        k += freq
    splits = np.vstack([srt[np.clip(rows, 0, n - 1)], srt[-1:] + 0.01])  # (nbins, genes)
    # First split >= value == number of splits strictly below it (splits are non-decreasing).
    return (x[:, None, :] > splits[None, :, :]).sum(axis=1)


def _entropy_of_codes(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Empirical entropy (nats) of each column of integer codes in [0, n_codes)."""
    n, g = codes.shape
    counts = np.bincount((codes + n_codes * np.arange(g)).ravel(), minlength=g * n_codes).reshape(g, n_codes)
    prob = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(prob > 0, prob * np.log(prob), 0.0).sum(axis=1)


def normalised_mutual_information(truth, pred) -> np.ndarray:
    """benchmarkUtils.R ``calculate_MI`` (the second definition, which replaces the first): both vectors cut
    into equal-frequency bins with ``nbins = max(10, n^(1/3))`` (infotheo truncates it to an integer), the
    empirical mutual information divided by sqrt(H(pred) * H(truth)) (``infotheo::mutinformation`` and
    ``entropy``, ``method = "emp"``). Undefined where either entropy is 0 (a constant vector)."""
    t, p = _pair(truth, pred)
    n = len(t)
    if n == 0:
        return np.full(t.shape[1], np.nan)
    nbins = int(max(10.0, n ** (1.0 / 3.0)))
    bt, bp = _equal_frequency_bins(t, nbins), _equal_frequency_bins(p, nbins)
    h_t, h_p = _entropy_of_codes(bt, nbins), _entropy_of_codes(bp, nbins)
    h_joint = _entropy_of_codes(bp * nbins + bt, nbins * nbins)
    mi = h_t + h_p - h_joint
    return _divide(mi, np.sqrt(h_p * h_t))


def jensen_shannon(truth, pred) -> np.ndarray:
    """benchmarkUtils.R ``calculate_JS_divergence``: the truth normalised to sum 1 and the prediction clipped
    at 0 (``pmax(pred, 0)``) and normalised to sum 1, a vector summing to 0 replaced by the uniform one as
    there; then philentropy's Jensen-Shannon divergence with ``unit = "log2"`` (0 log 0 = 0), in [0, 1]."""
    t, p = _pair(truth, pred)
    n = len(t)
    p = np.maximum(p, 0.0)

    def normalise(x):
        total = x.sum(axis=0)
        return np.where(total > 0, x / np.where(total > 0, total, 1.0), 1.0 / max(n, 1))

    a, b = normalise(t), normalise(p)
    m = a + b

    def part(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, x * np.log2(2.0 * x / m), 0.0).sum(axis=0)

    return 0.5 * (part(a) + part(b))


def _r_cut_levels(x: np.ndarray, levels: int) -> np.ndarray:
    """R ``cut(x, levels, labels = FALSE) - 1`` for each column: ``levels`` equal-width intervals over the
    range, closed on the right, the outer breaks pushed out by range/1000; a constant column sits in the
    middle interval (R widens a zero range around the value, which then falls into interval levels/2)."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    width = hi - lo
    constant = width == 0
    step = np.where(constant, 1.0, width) / levels
    # Interval k (0-based) holds lo + k*step < x <= lo + (k+1)*step; compute it, then correct rounding by
    # checking the two neighbouring breaks exactly as R's .bincode compares them.
    k = np.clip(np.ceil((x - lo) / step) - 1, 0, levels - 1)
    below = lo + k * step
    k = np.where((k > 0) & (x <= below), k - 1, k)
    above = lo + (k + 1) * step
    k = np.where((k < levels - 1) & (x > above), k + 1, k)
    return np.where(constant, levels // 2 - 1, k)


def ssim_global(truth, pred) -> np.ndarray:
    """benchmarkUtils.R ``calculate_SSIM(pred, exprs)``: each vector divided by its maximum (all zeros when the
    maximum is 0), cut into 256 equal-width levels (R ``cut``), then ONE global SSIM over the section's spots:
    ((2 mu_x mu_y + C1)(2 cov + C2)) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)), C1 = (0.01 * 255)^2,
    C2 = (0.03 * 255)^2, R's n - 1 (co)variances. Undefined with fewer than 2 spots."""
    t, p = _pair(truth, pred)
    if len(t) < 2:
        return np.full(t.shape[1], np.nan)

    def levels(x):
        top = x.max(axis=0)
        scaled = np.where(top == 0, 0.0, x / np.where(top == 0, 1.0, top))
        return _r_cut_levels(scaled, SSIM_LEVELS)

    x, y = levels(p), levels(t)
    c1 = (0.01 * (SSIM_LEVELS - 1)) ** 2
    c2 = (0.03 * (SSIM_LEVELS - 1)) ** 2
    mx, my = x.mean(axis=0), y.mean(axis=0)
    n = len(x)
    cov = ((x - mx) * (y - my)).sum(axis=0) / (n - 1)
    vx, vy = x.var(axis=0, ddof=1), y.var(axis=0, ddof=1)
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def auc_at(counts, pred, cutoff: float, ranks: np.ndarray | None = None) -> np.ndarray:
    """benchmarkUtils.R ``calculate_AUC(pred, exprs_orig, cutoff)``: the area under the ROC curve of the
    prediction for "raw count > cutoff" (``pROC::auc(direction = "<")``: cases score higher; ties count
    half), via the Mann-Whitney rank sum. Undefined (NA in R) where the counts are all 0 or all above 0
    (R's first check, whatever the cut-off) or where one class is empty at this cut-off."""
    c, p = _pair(counts, pred)
    if ranks is None:
        from bench.evaluation.metrics import column_ranks

        ranks = column_ranks(p)
    positive = c > cutoff
    n1 = positive.sum(axis=0).astype(np.float64)
    n0 = len(c) - n1
    u = np.where(positive, ranks, 0.0).sum(axis=0) - n1 * (n1 + 1) / 2.0
    out = _divide(u, n1 * n0)
    nonzero = c > 0
    one_sided = nonzero.all(axis=0) | ~nonzero.any(axis=0)
    out[one_sided | (n1 == 0) | (n0 == 0)] = np.nan
    return out


# ---- SpaRED (spared/metrics/metrics.py) -----------------------------------------------------------------------

def r2_columns(truth, pred) -> np.ndarray:
    """SpaRED ``r2_score_cols``: 1 - sum (truth - pred)^2 / sum (truth - mean truth)^2 per column. SpaRED
    drops single-value columns; a column with no variance gives -inf or NaN there and is undefined here."""
    t, p = _pair(truth, pred)
    tss = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    rss = ((t - p) ** 2).sum(axis=0)
    out = 1.0 - _divide(rss, tss)
    if len(t) < 2:
        out[:] = np.nan
    return out


def r2_per_gene(truth, pred) -> np.ndarray:
    """SpaRED ``r2_score_gene`` (R2-Gene): ``r2_score_cols`` over spots, one value per gene."""
    return r2_columns(truth, pred)


def r2_per_spot(truth, pred) -> np.ndarray:
    """SpaRED ``r2_score_patch`` (R2-Patch): ``r2_score_cols`` of the transposed matrices, one per spot."""
    t, p = _pair(truth, pred)
    return r2_columns(t.T, p.T)


def pcc_per_spot(truth, pred) -> np.ndarray:
    """SpaRED ``pearsonr_patch`` (PCC-Patch): per spot, the cosine similarity of the centred truth and
    prediction over the genes, i.e. Pearson r across genes. SpaRED's torch cosine gives 0 for a constant row
    (its eps); here that row is undefined (NaN), as Pearson r is everywhere in this suite."""
    from bench.evaluation.metrics import pearson_per_gene

    t, p = _pair(truth, pred)
    return pearson_per_gene(t.T, p.T)


# ---- Moran's I on the spot graph ------------------------------------------------------------------------------

NEIGHBOUR_RADIUS = 1.5  # x the section's median nearest-neighbour distance (array coordinates)


def spot_graph(coords, section_ids=None, radius: float = NEIGHBOUR_RADIUS):
    """Binary, symmetric weights between spots of the same section that lie within ``radius`` times the
    section's median nearest-neighbour distance: the 8 surrounding spots on a square ST grid (queen
    contiguity), the 6 of the hexagonal ring plus the 2 above and below on Visium's array coordinates.
    Deterministic (no k-nearest ties to break). Sparse (n_spots, n_spots)."""
    from scipy.sparse import coo_matrix
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.float64)
    n = len(coords)
    sections = np.zeros(n, dtype=int) if section_ids is None else np.unique(np.asarray(section_ids, str),
                                                                                return_inverse=True)[1]
    pairs = []
    for s in np.unique(sections):
        idx = np.flatnonzero(sections == s)
        if len(idx) < 2:
            continue
        tree = cKDTree(coords[idx])
        nearest = tree.query(coords[idx], k=2)[0][:, 1]
        step = float(np.median(nearest))
        if not step > 0:
            continue
        found = tree.query_pairs(radius * step, output_type="ndarray")
        pairs.append(idx[found])
    found = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=int)
    r = np.concatenate([found[:, 0], found[:, 1]])
    c = np.concatenate([found[:, 1], found[:, 0]])
    return coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).tocsr()


def morans_i_by_section(values, coords, section_ids) -> np.ndarray:
    """Each column's Moran's I within every section on its own spot graph, averaged over the sections where
    it is defined (pooling sections would count the offsets between them as spatial autocorrelation)."""
    values = np.asarray(values, dtype=np.float64)
    section_ids = np.asarray(section_ids, dtype=str)
    total = np.zeros(values.shape[1])
    count = np.zeros(values.shape[1])
    for s in np.unique(section_ids):
        at = section_ids == s
        i = morans_i(values[at], spot_graph(np.asarray(coords)[at]))
        ok = np.isfinite(i)
        total[ok] += i[ok]
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def morans_i(values, graph) -> np.ndarray:
    """Moran's I of each column: I = (n / S0) * sum_ij w_ij z_i z_j / sum_i z_i^2, z the centred values,
    S0 the sum of the weights. Undefined where the column is constant or the graph has no edge."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    s0 = float(graph.sum()) if n else 0.0
    z = x - x.mean(axis=0)
    num = (z * (graph @ z)).sum(axis=0)
    den = (z ** 2).sum(axis=0)
    den = np.where(den <= 1e-12 * np.maximum(1.0, (x ** 2).sum(axis=0)), 0.0, den)
    return _divide(n * num, s0 * den) if s0 > 0 else np.full(x.shape[1], np.nan)
