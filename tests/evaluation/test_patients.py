"""Patient-level inference: the sign-flip test against an enumeration written here, the hierarchical
bootstrap against a slow explicit loop, per-section and per-patient tables against direct computation,
and the verdict on planted data (a patient-driven gene-level "win" is not claimed; a real one is)."""
import itertools
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from synthetic_job_folders import write_job

from bench.evaluation import patients, resampling, stats
from bench.evaluation.evaluate import evaluate_jobs
from bench.evaluation.metrics import pearson_per_gene
from bench.records import JobKey, Setting
from bench.report.build import summary_rows
from bench.report.data import RunResults
from bench.report.verdict import build_verdict

# The verdict reads Pearson r only; every registered metric is checked in test_metric_registry.py.
VERDICT_METRICS = ["pearson", "spearman", "mse", "mae"]

# ---- the sign-flip permutation test -----------------------------------------------------------------------

def _enumerated_p(d):
    """Two-sided p by listing every sign pattern (independent of the implementation's bit tricks)."""
    d = list(d)
    observed = abs(sum(d))
    hits = total = 0
    for signs in itertools.product((-1.0, 1.0), repeat=len(d)):
        total += 1
        hits += abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12
    return hits / total


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11])
def test_sign_flip_p_equals_an_exact_enumeration(n):
    rng = np.random.default_rng(n)
    for trial in range(4):
        d = rng.normal(0.02 * trial, 0.05, n)
        if trial == 3 and n > 2:
            d[0], d[1] = 0.0, -d[2]  # a zero and a tie of magnitudes
        out = resampling.sign_flip_test(d)
        assert out["exact"] and out["n_patterns"] == 2 ** n and out["n"] == n
        assert out["p_value"] == pytest.approx(_enumerated_p(d), abs=1e-12)
        assert out["p_min"] == pytest.approx(2 / 2 ** n)


def test_sign_flip_smallest_p_is_reached_when_every_patient_agrees():
    out = resampling.sign_flip_test(np.full(8, 0.1) + np.arange(8) * 1e-3)
    assert out["p_value"] == pytest.approx(2 / 256) == pytest.approx(out["p_min"])
    assert resampling.sign_flip_test([0.3, 0.2])["p_value"] == 0.5  # two patients: never below 0.5
    assert resampling.sign_flip_test([0.0, 0.0, 0.0])["p_value"] == 1.0
    undefined = resampling.sign_flip_test([np.nan, 0.1])
    assert undefined["n"] == 1 and undefined["p_value"] == 1.0
    assert np.isnan(resampling.sign_flip_test([np.nan])["p_value"])


def test_monte_carlo_sign_flip_agrees_with_the_enumeration_and_is_seeded():
    d = np.random.default_rng(3).normal(0.02, 0.05, 12)
    exact = resampling.sign_flip_test(d)["p_value"]
    mc = resampling.sign_flip_test(d, exact_max=5, n_monte_carlo=100_000, seed=1)
    assert not mc["exact"] and mc["n_patterns"] == 100_000
    assert abs(mc["p_value"] - exact) < 0.01  # Monte-Carlo sd at p ~ 0.1 is ~0.001
    assert mc["p_value"] == resampling.sign_flip_test(d, exact_max=5, n_monte_carlo=100_000, seed=1)["p_value"]


# ---- the hierarchical bootstrap -------------------------------------------------------------------------

def _nested_case(seed=0):
    """4 patients with 1-3 sections of 5-9 genes; 2 methods x 3 metrics. Method 0 puts the variation at one
    level per metric, so each level of resampling shows on its own: metric 0 varies between patients only,
    metric 1 between the sections of a patient only (offsets summing to 0 within each patient), metric 2
    between genes only (the same spread in every section). Method 1 is method 0 plus per-gene noise and a
    shift, with one undefined gene."""
    rng = np.random.default_rng(seed)
    sections, patient = [], []
    for p, n_sections in enumerate([1, 2, 3, 2]):
        level = rng.normal(0.0, 0.3)
        offsets = rng.normal(0, 0.2, n_sections)
        offsets -= offsets.mean()
        for k in range(n_sections):
            n_genes = int(rng.integers(5, 10))
            spread = rng.permutation(np.linspace(-0.3, 0.3, n_genes))
            first = np.stack([np.full(n_genes, level), np.full(n_genes, offsets[k]), spread], axis=1)
            second = first + 0.05 + rng.normal(0, 0.05, first.shape)
            sections.append(np.stack([first, second], axis=1))  # (genes, methods, metrics)
            patient.append(f"P{p}")
    sections[1][0, 1, 2] = np.nan
    return sections, np.array(patient)


def _reference_bootstrap(sections, patient, n_boot, seed):
    """The definition, one replicate and one unit at a time."""
    rng = np.random.default_rng(seed)
    labels = sorted(set(patient))
    members = {p: [s for s in range(len(sections)) if patient[s] == p] for p in labels}
    overall, difference = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-undefined draw: NaN
        for _ in range(n_boot):
            patient_means, patient_diffs = [], []
            for _ in labels:
                p = labels[rng.integers(len(labels))]
                section_means = []
                for _ in members[p]:
                    s = members[p][rng.integers(len(members[p]))]
                    genes = sections[s][rng.integers(0, len(sections[s]), len(sections[s]))]
                    section_means.append(np.nanmean(genes, axis=0))
                section_means = np.array(section_means)
                patient_means.append(np.nanmean(section_means, axis=0))
                patient_diffs.append(np.nanmean(section_means[:, 0] - section_means[:, 1], axis=0))
            overall.append(np.nanmean(patient_means, axis=0))
            difference.append(np.nanmean(patient_diffs, axis=0))
    return np.array(overall), np.array(difference)


@pytest.mark.slow
def test_hierarchical_bootstrap_matches_a_slow_reference_loop():
    from scipy.stats import ks_2samp

    sections, patient = _nested_case()
    n_boot = 5000
    fast = resampling.hierarchical_bootstrap(sections, patient, n_boot=n_boot, seed=5, pairs=[(0, 1)])
    ref_overall, ref_diff = _reference_bootstrap(sections, patient, n_boot, seed=11)
    series = [(f"method {m} metric {k}", fast["overall"][:, m, k], ref_overall[:, m, k])
              for m in range(2) for k in range(3)]
    series += [(f"difference metric {k}", fast["difference"][:, 0, k], ref_diff[:, k]) for k in range(3)]
    for name, got, ref in series:
        assert ref.std() > 0.005, name  # every level contributes: a level left out would change its series
        assert abs(got.mean() - ref.mean()) < 4 * ref.std() / np.sqrt(n_boot / 2), name
        assert got.std() == pytest.approx(ref.std(), rel=0.06), name
        # Two samples of one distribution: KS distance above 0.045 has p < 0.001 at 5,000 + 5,000 draws. Rounded
        # first: the same atom (e.g. 0) summed in another order lands on either side of it by 1e-17.
        assert ks_2samp(np.round(got, 10), np.round(ref, 10)).statistic < 0.045, name
    # Seeded: the same seed gives the same replicates; the observed statistic sits inside the interval.
    again = resampling.hierarchical_bootstrap(sections, patient, n_boot=n_boot, seed=5, pairs=[(0, 1)])
    assert np.array_equal(fast["overall"], again["overall"], equal_nan=True)
    observed = resampling.nested_means(sections, patient, pairs=[(0, 1)])
    low, high = resampling.percentile_interval(fast["overall"])
    assert np.all(low <= observed["overall"]) and np.all(observed["overall"] <= high)
    # Where patients carry the variation, resampling genes alone is several times too narrow.
    genes_only = stats.bootstrap_ci([s[:, 1, :] for s in sections], n_boot=2000)
    assert (high[1, 0] - low[1, 0]) > 3 * (genes_only[1][0] - genes_only[0][0])


def test_nested_means_average_genes_then_sections_then_patients():
    sections, patient = _nested_case()
    out = resampling.nested_means(sections, patient, pairs=[(0, 1)])
    assert list(out["patients"]) == ["P0", "P1", "P2", "P3"]
    for i, p in enumerate(out["patients"]):
        mine = [s for s, q in zip(sections, patient) if q == p]
        expected = np.mean([np.nanmean(s[:, :, 0], axis=0) for s in mine], axis=0)
        assert np.allclose(out["per_patient"][i, :, 0], expected)
        diff = np.mean([np.nanmean(s[:, 0, 0]) - np.nanmean(s[:, 1, 0]) for s in mine])
        assert out["per_patient_difference"][i, 0, 0] == pytest.approx(diff)
    assert np.allclose(out["overall"][:, 0], out["per_patient"][:, :, 0].mean(axis=0))


def test_bootstrap_of_8_patients_and_5_methods_takes_well_under_a_second_or_two():
    rng = np.random.default_rng(0)
    sections = [rng.normal(0.2, 0.1, (250, 5, 4)) for _ in range(8 * 3)]
    patient = np.repeat(np.arange(8), 3)
    pairs = list(itertools.combinations(range(5), 2))
    started = time.perf_counter()
    out = resampling.hierarchical_bootstrap(sections, patient, n_boot=2000, seed=0, pairs=pairs)
    assert time.perf_counter() - started < 3.0
    assert out["overall"].shape == (2000, 5, 4) and out["difference"].shape == (2000, 10, 4)


# ---- tables and verdict from job folders -------------------------------------------------------------------

def _write_job(out, method, fold, seed, truth, pred, sections, patient_of, protocol="lopo"):
    key = JobKey("toy", Setting(protocol, "hvg:10"), fold, method, seed)
    return write_job(out, key, truth, pred, sections, patient_of)


def _prediction(truth, r, rng):
    """A prediction whose per-gene Pearson r with ``truth`` (standardised columns) is about ``r``."""
    z = (truth - truth.mean(axis=0)) / truth.std(axis=0)
    return r * z + np.sqrt(1 - r ** 2) * rng.normal(0, 1, truth.shape)


def _lopo_run(out, quality: dict[str, list[float]], n_spots=120, n_genes=60, seed=0):
    """One fold per patient (one section each); ``quality[method][p]`` is the method's r on patient p."""
    rng = np.random.default_rng(seed)
    folders = []
    n_patients = len(next(iter(quality.values())))
    for p in range(n_patients):
        truth = rng.normal(0, 1, (n_spots, n_genes)) + rng.normal(0, 1, n_genes)
        sid = f"S{p}"
        for method, r in quality.items():
            folders.append(_write_job(out, method, p, 0, truth, _prediction(truth, r[p], rng), [sid] * n_spots,
                                      {sid: f"patient{p}"}))
    return folders


def _verdict(evaluation):
    return build_verdict(evaluation.per_method, evaluation.per_patient, evaluation.patient_pairwise,
                         evaluation.pairwise, evaluation.friedman)


def test_a_patient_driven_gene_level_win_is_not_claimed(tmp_path):
    """Method a is far better on three patients and b somewhat better on three others. Every gene shares its
    patient's effect, so averaged over folds a is ahead on almost every gene: the gene-level Wilcoxon is
    'significant'. Across patients the methods do not differ, and the verdict must say so."""
    delta = np.array([0.3, 0.3, 0.3, -0.2, -0.2, -0.2])
    folders = _lopo_run(tmp_path, {"a": list(0.5 + delta / 2), "b": list(0.5 - delta / 2)})
    evaluation = evaluate_jobs(folders, n_boot=500, metrics=VERDICT_METRICS)
    gene_level = evaluation.pairwise.iloc[0]
    assert gene_level["p_bh"] < 1e-6 and gene_level["share_improved"] > 0.8, "the trap is set"
    pair = evaluation.patient_pairwise
    pair = pair[pair["gene_set"] == "acg"].iloc[0]
    assert pair["n_patients"] == 6 and pair["n_a_better"] == 3 and pair["p_value"] > 0.3
    assert pair["ci_low"] < 0 < pair["ci_high"]
    verdict = _verdict(evaluation)
    assert not verdict.claim and verdict.winner is None
    assert verdict.lines[0].startswith("Who wins: no winner can be claimed for new patients.")
    text = " ".join(verdict.lines)
    assert "better on 3 of 6 patients" in text and "not significant" in text
    assert "Within these test sections only" in text  # the gene-level result is there, labelled for what it is


@pytest.mark.slow
def test_a_difference_on_every_one_of_8_patients_is_found(tmp_path):
    base = np.linspace(0.3, 0.7, 8)
    folders = _lopo_run(tmp_path, {"b": list(base - 0.06), "a": list(base + 0.06)}, seed=1)
    evaluation = evaluate_jobs(folders, n_boot=1000, metrics=VERDICT_METRICS)
    pair = evaluation.patient_pairwise
    pair = pair[pair["gene_set"] == "acg"].iloc[0]
    assert (pair["method_a"], pair["method_b"]) == ("b", "a")
    assert pair["n_patients"] == 8 and pair["n_b_better"] == 8
    assert pair["p_value"] == pytest.approx(2 / 256) and pair["p_min"] == pytest.approx(2 / 256)
    assert pair["ci_high"] < 0, "the interval of b - a excludes 0"
    methods = evaluation.per_method.set_index("method")
    assert methods.loc["a", "n_patients"] == 8 and methods.loc["a", "patient_acg_pearson_ci_low"] < \
        methods.loc["a", "patient_acg_pearson"] < methods.loc["a", "patient_acg_pearson_ci_high"]
    verdict = _verdict(evaluation)
    assert verdict.claim and verdict.winner == "a" and verdict.n_patients == 8
    text = " ".join(verdict.lines)
    assert verdict.lines[0].startswith("Who wins: a, on the evidence of 8 patients")
    assert "better on 8 of 8 patients (every one)" in text and "smallest p attainable with 8 patients is 0.008" in text
    diff_ci = f"[{-pair['ci_high']:.3f}, {-pair['ci_low']:.3f}]"
    assert f"95% CI of the difference across patients {diff_ci}" in text


def test_two_patients_give_per_patient_values_and_no_claim(tmp_path):
    folders = _lopo_run(tmp_path, {"a": [0.6, 0.5], "b": [0.3, 0.2]}, seed=2)
    evaluation = evaluate_jobs(folders, n_boot=200, metrics=VERDICT_METRICS)
    methods = evaluation.per_method.set_index("method")
    assert np.isnan(methods.loc["a", "patient_acg_pearson_ci_low"]) and methods.loc["a", "n_patients"] == 2
    assert methods.loc["a", "patient_ci_note"].startswith("fewer than 3 patients")
    pair = evaluation.patient_pairwise.iloc[0]
    assert np.isnan(pair["ci_low"]) and pair["p_min"] == 0.5
    verdict = _verdict(evaluation)
    assert not verdict.claim
    assert verdict.lines[0].startswith("Who wins: no claim about new patients is supported: 2 patient(s) were tested")
    per_patient = evaluation.per_patient.set_index(["method", "patient"])["acg_pearson"]
    assert f"per patient: patient0 {per_patient[('a', 'patient0')]:.3f}, patient1 " \
           f"{per_patient[('a', 'patient1')]:.3f}" in verdict.lines[0]
    # The report's score table says why there is no interval and shows each patient's value instead.
    res = RunResults(tmp_path, {}, evaluation.per_method, evaluation.per_job, evaluation.per_gene, evaluation.pairwise,
                     evaluation.friedman, evaluation.clustering, evaluation.per_patient, evaluation.patient_pairwise)
    header, rows, _ = summary_rows(res)
    acg = {row[0]: row[header.index("ACG r")] for row in rows}
    assert acg["a"][1] == (f"no CI (< 3 patients): {per_patient[('a', 'patient0')]:.3f}, "
                           f"{per_patient[('a', 'patient1')]:.3f}")


def test_loso_sections_and_seeds_are_averaged_within_each_patient(tmp_path):
    """Two patients x two sections under loso, two seeds: per-section r is computed within each section,
    seeds are averaged, a patient's sections are averaged once; pooled r over a fold with two sections
    is reported beside it and differs (the sections have different offsets)."""
    rng = np.random.default_rng(4)
    patient_of = {"A1": "A", "A2": "A", "B1": "B", "B2": "B"}
    folders, truths, preds = [], {}, {}
    for fold, sid in enumerate(patient_of):
        truth = rng.normal(0, 1, (50, 20)) + 3.0 * fold  # a different offset per section
        truths[sid] = truth
        for seed in (0, 1):
            pred = _prediction(truth, 0.3 + 0.1 * seed, rng) + 3.0 * fold
            preds[(sid, seed)] = pred
            folders.append(_write_job(tmp_path, "m", fold, seed, truth, pred, [sid] * 50, {sid: patient_of[sid]},
                                      protocol="loso"))
    # One lopo-style job holding both of patient A's sections: pooled r mixes the offset in.
    both = np.vstack([truths["A1"], truths["A2"]])
    pooled_pred = np.vstack([preds[("A1", 0)], preds[("A2", 0)]])
    folders.append(_write_job(tmp_path, "m", 9, 0, both, pooled_pred, ["A1"] * 50 + ["A2"] * 50,
                              {"A1": "A", "A2": "A"}, protocol="lopo"))
    evaluation = evaluate_jobs(folders, n_boot=100, metrics=VERDICT_METRICS)
    per_section = evaluation.per_section
    loso = per_section[per_section["protocol"] == "loso"].set_index(["section", "seed"])
    for (sid, seed), pred in preds.items():
        assert loso.loc[(sid, seed), "acg_pearson"] == pytest.approx(np.mean(pearson_per_gene(truths[sid], pred)))
    per_patient = evaluation.per_patient
    a = per_patient[(per_patient["protocol"] == "loso") & (per_patient["patient"] == "A")].iloc[0]
    expected = np.mean([np.mean([loso.loc[(s, seed), "acg_pearson"] for seed in (0, 1)]) for s in ("A1", "A2")])
    assert a["acg_pearson"] == pytest.approx(expected) and a["n_sections"] == 2 and a["n_seeds"] == 2
    by_seed = [np.mean([loso.loc[(s, seed), "acg_pearson"] for s in ("A1", "A2")]) for seed in (0, 1)]
    assert a["acg_pearson_seed_sd"] == pytest.approx(np.std(by_seed, ddof=1))
    methods = evaluation.per_method.set_index("protocol")
    assert methods.loc["loso", "n_patients"] == 2 and methods.loc["loso", "n_sections"] == 4
    assert methods.loc["loso", "patient_acg_pearson"] == pytest.approx(
        per_patient.loc[per_patient["protocol"] == "loso", "acg_pearson"].mean())
    folds = evaluation.per_fold[evaluation.per_fold["protocol"] == "loso"].set_index("fold")
    assert folds.loc[0, "n_seeds"] == 2 and folds.loc[0, "test_patients"] == "A"
    assert folds.loc[0, "acg_pearson_seed_sd"] == pytest.approx(
        np.std([loso.loc[("A1", s), "acg_pearson"] for s in (0, 1)], ddof=1))
    # Pooled over the two sections of the lopo job vs per section: the offsets inflate pooled r.
    job = evaluation.per_job[evaluation.per_job["protocol"] == "lopo"].iloc[0]
    assert job["acg_pearson"] == pytest.approx(np.mean(pearson_per_gene(both, pooled_pred)))
    lopo = per_section[per_section["protocol"] == "lopo"]
    assert job["acg_pearson"] > lopo["acg_pearson"].mean() + 0.3
    assert evaluation.per_fold.loc[evaluation.per_fold["protocol"] == "lopo", "section_acg_pearson"].iloc[0] == \
        pytest.approx(lopo["acg_pearson"].mean())


def test_friedman_uses_patients_as_blocks():
    per_patient = pd.DataFrame({"dataset": "d", "protocol": "loso", "patient": ["P", "Q", "R", "S"] * 3,
                                "method": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
                                "acg_pearson": [.5, .6, .7, .4, .4, .5, .6, .3, .1, .2, .3, .0]})
    out = patients.friedman_from_patients(per_patient)
    assert out["unit"] == "patient" and out["n_blocks"] == 4
    assert out["average_ranks"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert out["blocks"] == [["d", "loso", p] for p in "PQRS"]


def test_job_folders_without_recorded_patients():
    lopo = {"job": {"protocol": "lopo", "fold": 2}}
    assert patients.job_patients(lopo, ["X1", "X2"]) == ({"X1": "fold2", "X2": "fold2"}, "fold (lopo)")
    loso = {"job": {"protocol": "loso", "fold": 0}, "job_key": "k"}
    assert patients.job_patients(loso, ["X1"]) == ({"X1": "X1"}, "section (patient unknown)")
    recorded = {"job": {"protocol": "loso"}, "test_patients": {"X1": "P"}}
    assert patients.job_patients(recorded, ["X1"]) == ({"X1": "P"}, "result.json")
