"""Patient-level inference: the hierarchical bootstrap and the exact sign-flip permutation test.

The patient is the unit of replication: a claim about new patients must be judged by how scores vary
between patients, not between the genes of the sections at hand (genes of one section are correlated and
share that section's quality, so resampling them alone describes these sections, not the next patient).

Data are nested patient > section > gene. A score at every level is the mean of the level below over its
defined (finite) values: a section's score is the mean over its genes, a patient's the mean over its
sections, a method's the mean over patients. Every function here is pure numpy on arrays.
"""
from __future__ import annotations

import numpy as np

EXACT_MAX_PATIENTS = 16  # up to 2^16 = 65,536 sign patterns are enumerated; above, Monte-Carlo
N_MONTE_CARLO = 100_000  # sign patterns drawn above EXACT_MAX_PATIENTS


def _nanmean_last(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan)


class _Accumulator:
    """Running mean over defined (finite) values: what each level of the nesting does."""

    def __init__(self, shape):
        self.total = np.zeros(shape)
        self.count = np.zeros(shape)

    def add(self, values: np.ndarray) -> None:
        ok = np.isfinite(values)
        self.total += np.where(ok, values, 0.0)
        self.count += ok

    def mean(self) -> np.ndarray:
        return _nanmean_last(self.total, self.count)


def _pair_differences(section_means: np.ndarray, pairs) -> np.ndarray:
    """(..., n_methods, n_metrics) -> (..., n_pairs, n_metrics): a - b for each pair (NaN unless both defined)."""
    if not len(pairs):
        return np.zeros(section_means.shape[:-2] + (0, section_means.shape[-1]))
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    return section_means[..., a, :] - section_means[..., b, :]


def _check(sections, patient) -> tuple[np.ndarray, int, int]:
    patient = np.asarray(patient)
    if len(sections) != len(patient) or not len(sections):
        raise ValueError(f"need one patient code per section and at least one section "
                         f"(got {len(sections)} sections, {len(patient)} codes)")
    shapes = {np.shape(v)[1:] for v in sections}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every section must be a (genes, methods, metrics) array; got shapes {sorted(shapes)}")
    n_methods, n_metrics = next(iter(shapes))
    return patient, n_methods, n_metrics


def nested_means(sections: list[np.ndarray], patient, pairs=()) -> dict[str, np.ndarray]:
    """The observed statistics the bootstrap resamples.

    ``sections``: one ``(n_genes, n_methods, n_metrics)`` array per section (NaN = undefined or not run);
    ``patient``: the patient of each section (any labels). ``pairs``: (a, b) method indices.
    Returns ``patients`` (the labels, sorted), ``per_patient`` (n_patients, n_methods, n_metrics),
    ``per_patient_difference`` (n_patients, n_pairs, n_metrics: the patient's mean over its sections of
    the section's a - b, where both are defined), ``overall`` (n_methods, n_metrics) and
    ``difference`` (n_pairs, n_metrics), each the mean over the patients where it is defined."""
    patient, n_methods, n_metrics = _check(sections, patient)
    labels = np.unique(patient)
    per_patient, per_diff = [], []
    for p in labels:
        acc, dacc = _Accumulator((n_methods, n_metrics)), _Accumulator((len(pairs), n_metrics))
        for s in np.flatnonzero(patient == p):
            values = np.asarray(sections[s], dtype=np.float64)
            ok = np.isfinite(values)
            means = _nanmean_last(np.where(ok, values, 0.0).sum(axis=0), ok.sum(axis=0))
            acc.add(means)
            dacc.add(_pair_differences(means, pairs))
        per_patient.append(acc.mean())
        per_diff.append(dacc.mean())
    per_patient = np.array(per_patient)
    per_diff = np.array(per_diff).reshape(len(labels), len(pairs), n_metrics)
    overall, diff = _Accumulator((n_methods, n_metrics)), _Accumulator((len(pairs), n_metrics))
    for i in range(len(labels)):
        overall.add(per_patient[i])
        diff.add(per_diff[i])
    return {"patients": labels, "per_patient": per_patient, "per_patient_difference": per_diff,
            "overall": overall.mean(), "difference": diff.mean()}


def hierarchical_bootstrap(sections: list[np.ndarray], patient, n_boot: int = 1000, seed: int = 0,
                           pairs=()) -> dict[str, np.ndarray]:
    """Replicates of ``nested_means``'s ``overall`` and ``difference``, resampling at every level.

    Each replicate draws as many patients as there are, with replacement; for every drawn patient, as many
    of its sections as it has, with replacement; for every drawn section, as many of its genes as it has,
    with replacement (each draw of a unit resamples its children afresh). Every method is scored on the
    same draws, so differences between methods are paired. Returns ``overall`` (n_boot, n_methods,
    n_metrics) and ``difference`` (n_boot, n_pairs, n_metrics); a replicate where a value is undefined at
    every drawn unit is NaN.

    Vectorised over replicates: the loop runs over patient slots x section slots x distinct sections,
    and a section's resampled gene means are one matrix product of draw counts with its values."""
    patient, n_methods, n_metrics = _check(sections, patient)
    rng = np.random.default_rng(seed)
    labels, codes = np.unique(patient, return_inverse=True)
    n_patients = len(labels)
    members = [np.flatnonzero(codes == p) for p in range(n_patients)]
    n_sections = np.array([len(m) for m in members])
    table = np.zeros((n_patients, n_sections.max()), dtype=np.int64)
    for p, m in enumerate(members):
        table[p, :len(m)] = m
    width = n_methods * n_metrics
    flat = [np.asarray(v, dtype=np.float64).reshape(len(v), width) for v in sections]
    filled = [np.where(np.isfinite(v), v, 0.0) for v in flat]
    finite = [np.isfinite(v).astype(np.float64) for v in flat]
    all_finite = [bool(f.all()) for f in finite]

    overall = _Accumulator((n_boot, n_methods, n_metrics))
    difference = _Accumulator((n_boot, len(pairs), n_metrics))
    drawn_patients = rng.integers(0, n_patients, size=(n_boot, n_patients))
    for i in range(n_patients):
        p = drawn_patients[:, i]
        size = n_sections[p]
        patient_acc = _Accumulator((n_boot, n_methods, n_metrics))
        patient_diff = _Accumulator((n_boot, len(pairs), n_metrics))
        for j in range(int(n_sections.max())):
            # Slot j exists for replicates whose drawn patient has more than j sections.
            pick = np.minimum((rng.random(n_boot) * size).astype(np.int64), size - 1)
            section = np.where(j < size, table[p, pick], -1)
            means = np.full((n_boot, width), np.nan)
            for s in np.unique(section[section >= 0]):
                rows = np.flatnonzero(section == s)
                n_genes = len(flat[s])
                if n_genes == 0:
                    continue  # a section with no gene in this set: undefined
                draws = rng.integers(0, n_genes, size=(len(rows), n_genes))
                # How often each replicate drew each gene; its sums are then one matrix product.
                # As float64: an integer matrix times a float one skips BLAS (ten times slower here).
                counts = np.bincount((draws + n_genes * np.arange(len(rows))[:, None]).ravel(),
                                     minlength=len(rows) * n_genes).reshape(len(rows), n_genes).astype(np.float64)
                # Where every value is defined, each replicate's count of defined draws is n_genes.
                n_defined = n_genes if all_finite[s] else counts @ finite[s]
                means[rows] = _nanmean_last(counts @ filled[s], n_defined)
            means = means.reshape(n_boot, n_methods, n_metrics)
            patient_acc.add(means)
            patient_diff.add(_pair_differences(means, pairs))
        overall.add(patient_acc.mean())
        difference.add(patient_diff.mean())
    return {"overall": overall.mean(), "difference": difference.mean()}


def percentile_interval(replicates: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis, ignoring undefined replicates (NaN where none is defined)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    low = np.full(replicates.shape[1:], np.nan)
    high = np.full(replicates.shape[1:], np.nan)
    flat = replicates.reshape(len(replicates), -1)
    for k in range(flat.shape[1]):
        col = flat[:, k][np.isfinite(flat[:, k])]
        if len(col):
            low.flat[k], high.flat[k] = np.percentile(col, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return low, high


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value a sign-flip test can reach with n paired patients: 2 / 2^n (only the
    observed signs and their mirror image are as extreme). 1 with no patient."""
    return 1.0 if n < 1 else 2.0 / 2.0 ** n


def sign_flip_test(differences, seed: int = 0, exact_max: int = EXACT_MAX_PATIENTS,
                   n_monte_carlo: int = N_MONTE_CARLO) -> dict:
    """Two-sided paired permutation test of mean(differences) = 0, one difference per patient.

    Under the null that the two methods are exchangeable on each patient, every difference's sign is
    equally likely; p is the share of the 2^n sign patterns whose |mean| is at least the observed one.
    Up to ``exact_max`` patients all patterns are enumerated (exact); above, ``n_monte_carlo`` random
    patterns are drawn (seeded) and p = (1 + hits) / (1 + draws). Undefined differences are dropped."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"n": n, "mean_difference": float(d.mean()) if n else float("nan"), "p_value": float("nan"),
           "p_min": smallest_p(n), "exact": n <= exact_max, "n_patterns": 0}
    if n == 0:
        return out
    observed = abs(d.sum())
    # Sums that equal the observed one up to rounding must count as "as extreme".
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if n <= exact_max:
        bits = (np.arange(2 ** n, dtype=np.int64)[:, None] >> np.arange(n)) & 1
        sums = np.abs((1 - 2 * bits) @ d)
        out.update(p_value=float(np.mean(sums >= observed - tol)), n_patterns=2 ** n)
    else:
        rng = np.random.default_rng(seed)
        hits = 0
        for start in range(0, n_monte_carlo, 10_000):  # in chunks: 10,000 x n signs at a time
            signs = rng.choice(np.array([-1.0, 1.0]), size=(min(10_000, n_monte_carlo - start), n))
            hits += int((np.abs(signs @ d) >= observed - tol).sum())
        out.update(p_value=(1 + hits) / (1 + n_monte_carlo), n_patterns=n_monte_carlo,
                   p_min=max(smallest_p(n), 1 / (1 + n_monte_carlo)))
    return out
