"""Timing of the evaluation's pure functions at realistic sizes (pytest-benchmark; one round, so plain
`pytest` runs them quickly too). `pytest tests/benchmarks --benchmark-only` prints the table."""
import numpy as np
import pandas as pd

from bench.evaluation import patients, stats
from bench.evaluation.evaluate import job_scores
from bench.evaluation.published import pcc_per_spot


def test_per_gene_metrics_10000_spots_by_1000_genes(benchmark):
    rng = np.random.default_rng(0)
    truth = rng.normal(1.0, 1.0, (10_000, 1_000)).astype(np.float32)
    pred = (0.5 * truth + rng.normal(0.0, 1.0, truth.shape)).astype(np.float32)
    pred[:, 0] = 0.5  # one undefined gene

    sets = stats.gene_sets(truth.mean(axis=0), None)

    def run():
        return job_scores(truth, pred, sets, ["pearson", "spearman", "mse", "mae"])[0], pcc_per_spot(truth, pred)

    metrics, spot = benchmark.pedantic(run, rounds=1, iterations=1)
    assert np.isnan(metrics["pearson"][0]) and np.isfinite(metrics["pearson"][1:]).all()
    assert abs(np.nanmean(metrics["pearson"]) - 0.447) < 0.01 and spot.shape == (10_000,)


def _set_means(metrics: dict, sets: dict) -> dict:
    """A job's ``<set>_<metric>`` (mean over the set's finite values), ``n_undefined_<metric>`` and ``n_genes``:
    the per-job columns the statistics read, from synthetic per-gene values standing in for every metric."""
    out = {}
    for name, values in metrics.items():
        finite = np.isfinite(values)
        for s, mask in sets.items():
            out[f"{s}_{name}"] = float(values[finite & mask].mean()) if (finite & mask).any() else float("nan")
        out[f"n_undefined_{name}"] = int((~finite).sum())
    out["n_genes"] = len(sets["acg"])
    return out


def _tables(n_methods=6, n_folds=6, n_genes=785, seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"G{j}" for j in range(n_genes)]
    gene_rows, job_rows = [], []
    for m in range(n_methods):
        for fold in range(n_folds):
            metrics = {"pearson": np.clip(rng.normal(0.1 + 0.03 * m, 0.15, n_genes), -1, 1),
                       "spearman": np.clip(rng.normal(0.1 + 0.03 * m, 0.15, n_genes), -1, 1),
                       "mse": rng.gamma(2.0, 0.2, n_genes), "mae": rng.gamma(2.0, 0.1, n_genes)}
            sets = stats.gene_sets(rng.gamma(2.0, 1.0, n_genes), rng.gamma(2.0, 1.0, n_genes))
            job = {"dataset": "d", "protocol": "lopo", "method": f"m{m}", "seed": 0, "fold": fold}
            gene_rows.append(pd.DataFrame({**job, "gene": genes, **metrics,
                                           **{f"in_{s}": mask for s, mask in sets.items()}}))
            job_rows.append({**job, **_set_means(metrics, sets)})
    return pd.concat(gene_rows, ignore_index=True), pd.DataFrame(job_rows)


def test_full_statistics_6_methods_6_folds_785_genes(benchmark):
    per_gene, per_job = _tables()

    def run():
        return stats.method_aggregates(per_job, per_gene, n_boot=1000, seed=0), stats.pairwise_tests(per_gene)

    per_method, pairwise = benchmark.pedantic(run, rounds=1, iterations=1)
    assert len(per_method) == 6 and len(pairwise) == 15
    assert (per_method["acg_pearson_ci_low"] < per_method["acg_pearson"]).all()


def test_patient_level_statistics_8_patients_x_3_sections_5_methods_250_genes(benchmark):
    """Everything ``bench evaluate`` adds per patient, at her2st's size (8 patients, 3 sections each, leave
    one patient out), with the 2,000-replicate hierarchical bootstrap."""
    rng = np.random.default_rng(0)
    genes = [f"G{j}" for j in range(250)]
    frames, rows = [], []
    for p in range(8):
        patient_level = rng.normal(0, 0.05)
        for k in range(3):
            section = f"S{p}{k}"
            sets = stats.gene_sets(rng.gamma(2.0, 1.0, 250), rng.gamma(2.0, 1.0, 250),
                                   train_morans_i=rng.gamma(2.0, 1.0, 250))
            for m in range(5):
                metrics = {name: rng.normal(0.1 + 0.03 * m + patient_level, 0.15, 250)
                           for name in patients.SECTION_METRICS}
                job = {"dataset": "d", "protocol": "lopo", "method": f"m{m}", "seed": 0, "fold": p,
                       "section": section, "patient": f"P{p}"}
                frames.append(pd.DataFrame({**job, "gene": genes, **metrics,
                                            **{f"in_{s}": mask for s, mask in sets.items()}}))
                rows.append({**job, "n_spots": 300, **_set_means(metrics, sets)})
    per_section_gene, per_section = pd.concat(frames, ignore_index=True), pd.DataFrame(rows)

    def run():
        level = patients.patient_level(per_section_gene, per_section, n_boot=2000, seed=0)
        return level, patients.friedman_from_patients(level["per_patient"])

    level, friedman = benchmark.pedantic(run, rounds=1, iterations=1)
    ranked = [m for m in patients.SECTION_METRICS if stats.higher_is_better(m) is not None]
    n_sets = len(stats.GENE_SETS)
    assert len(level["per_patient"]) == 40 and len(level["pairwise"]) == 10 * n_sets * len(ranked)
    assert friedman["n_blocks"] == 8
    methods = level["methods"].set_index("method")
    assert (methods["patient_acg_pearson_ci_low"] < methods["patient_acg_pearson"]).all()
    assert friedman["average_ranks"]["m4"] < friedman["average_ranks"]["m0"]
