"""Scores per test section and per patient, and the patient-level intervals and tests built on them.

Pure functions over arrays and tables (no files, no tracking); ``bench.evaluation.evaluate`` calls them.

- Per section: every per-gene score is also computed within each test section alone (``per_section_gene``)
  and averaged over the job's gene sets (``per_section``). A job's pooled scores (``per_gene``/``per_job``)
  correlate over all its test spots at once, which mixes differences between sections into r.
- Per patient: seeds are averaged within each section (their spread is training noise, reported apart);
  a patient's score is the mean over its sections, so under ``loso`` a patient's several folds count once.
- Across patients: ``resampling.hierarchical_bootstrap`` (patients, then sections, then genes) gives the
  intervals, with at least ``MIN_PATIENTS`` patients; ``resampling.sign_flip_test`` on the per-patient
  differences gives each pair's p-value, Benjamini-Hochberg corrected across pairs; Friedman/Nemenyi
  rank methods within each patient.
"""
from __future__ import annotations

import json
import logging
from itertools import combinations

import numpy as np
import pandas as pd

from bench.evaluation import metric_registry, resampling, stats

log = logging.getLogger(__name__)
MIN_PATIENTS = 3  # fewer patients give no interval: a percentile bootstrap of 1 or 2 values is meaningless
SECTION_METRICS = stats.METRICS  # the default: every registered metric (an evaluation may name fewer)
PAIR_METRIC = metric_registry.HEADLINE  # the verdict's metric
NO_INTERVAL = (f"fewer than {MIN_PATIENTS} patients: an interval across patients would describe these "
               f"patients only; see the per-patient values")


# ---- which patient each test section came from ---------------------------------------------------------

def job_patients(result: dict, section_ids) -> tuple[dict[str, str], str]:
    """(section -> patient, where that came from) for a job's test sections.

    ``result.json`` records ``test_patients`` (written by the runner). Job folders from before it did:
    under ``lopo`` a fold is one patient (named ``fold<k>``); under other protocols the patient is unknown
    and each section counts as its own patient, which overstates the replication (a warning says so)."""
    sections = [str(s) for s in pd.unique(np.asarray(section_ids, dtype=str))]
    recorded = result.get("test_patients")
    if isinstance(recorded, dict) and all(s in recorded for s in sections):
        return {s: str(recorded[s]) for s in sections}, "result.json"
    job = result.get("job", {})
    if job.get("protocol") == "lopo":
        return {s: f"fold{job.get('fold')}" for s in sections}, "fold (lopo)"
    log.warning("job %s: result.json does not record test_patients (written by an older version); each test "
                "section counts as its own patient, which overstates the number of patients",
                result.get("job_key", "?"))
    return {s: s for s in sections}, "section (patient unknown)"


# ---- per test section -------------------------------------------------------------------------------------

def score_sections(job: dict, truth: np.ndarray, pred: np.ndarray, section_ids, genes: list[str],
                   sets: dict[str, np.ndarray], patient_of: dict[str, str], metrics=None, counts=None,
                   coords=None) -> tuple[pd.DataFrame, list[dict]]:
    """Every registered metric within each test section of one job (the job's gene sets): per-gene values
    (``per_section_gene``) and one aggregate row per section (``<set>_<metric>`` as in
    ``metric_registry.aggregates``, plus its spot count)."""
    metrics = metric_registry.resolve(None if metrics is None else list(metrics))
    section_ids = np.asarray(section_ids, dtype=str)
    frames, rows = [], []
    for section in pd.unique(section_ids):
        at = section_ids == section
        block = metric_registry.Block(truth[at], pred[at], None if counts is None else counts[at],
                                      None if coords is None else coords[at])
        values = metric_registry.per_gene(block, metrics)
        head = {**job, "section": str(section), "patient": patient_of[str(section)]}
        frames.append(pd.DataFrame({**head, "gene": genes, **values,
                                    **{f"in_{s}": mask for s, mask in sets.items()}}))
        rows.append({**head, "n_spots": int(at.sum()), **metric_registry.aggregates(block, metrics, values, sets)})
    return pd.concat(frames, ignore_index=True), rows


# ---- per patient and across patients ----------------------------------------------------------------------

def _nested_arrays(group: pd.DataFrame, methods: list[str], metrics: list[str]
                   ) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Seed-averaged per-gene scores of every (patient, section, gene) x method x metric, and set membership.

    A gene's score in a section is averaged over the seeds that scored it (training noise is not a
    replicate); it is in a gene set when it was in any seed's (the sets only differ between seeds when
    the folds do, under patient-kfold)."""
    keys = ["patient", "section", "gene"]
    present = [m for m in metrics if m in group]  # spot-level metrics have no per-gene column: NaN, filled later
    means = group.groupby(keys + ["method"], sort=True)[present].mean()
    wide = means.unstack("method").reindex(columns=pd.MultiIndex.from_product([metrics, methods]))
    values = wide.to_numpy(dtype=np.float64).reshape(len(wide), len(metrics), len(methods))
    members = group.groupby(keys, sort=True)[[f"in_{s}" for s in stats.GENE_SETS]].any().reindex(wide.index)
    return wide.index.to_frame(index=False), values.transpose(0, 2, 1), members.fillna(False)


def _section_blocks(index: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(patient, rows) of each section's block of consecutive rows (the index is sorted)."""
    key = index["patient"].astype(str) + "\0" + index["section"].astype(str)
    starts = np.flatnonzero(np.r_[True, key.to_numpy()[1:] != key.to_numpy()[:-1]])
    ends = np.r_[starts[1:], len(key)]
    return [(str(index["patient"].iat[a]), np.arange(a, b)) for a, b in zip(starts, ends)]


def _seed_noise(per_section: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per (method, patient): sd over seeds of the patient's score (mean over its sections in that seed)."""
    cols = [c for c in stats.aggregate_columns(metrics) if c in per_section]
    per_seed = per_section.groupby(["method", "patient", "seed"], sort=False)[cols].mean()
    sd = per_seed.groupby(level=["method", "patient"], sort=False).std(ddof=1)
    return sd.rename(columns={c: f"{c}_seed_sd" for c in cols})


def patient_level(per_section_gene: pd.DataFrame, per_section: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05, metrics=None) -> dict[str, pd.DataFrame]:
    """``per_patient`` (one row per method x patient), ``methods`` (one row per method: mean over patients,
    sd across patients, hierarchical-bootstrap interval, training noise, number of patients) and
    ``pairwise`` (per pair and gene set: per-patient differences, their interval and sign-flip p)."""
    metrics = [m for m in (SECTION_METRICS if metrics is None else metrics) if f"acg_{m}" in per_section]
    patients, methods, pairs = [], [], []
    for (dataset, protocol), group in per_section_gene.groupby(["dataset", "protocol"], sort=False):
        sections = per_section[(per_section["dataset"] == dataset) & (per_section["protocol"] == protocol)]
        out = _patient_level_one(group, sections, n_boot, seed, alpha, metrics)
        for frame, part in zip((patients, methods, pairs), out):
            frame.append(part.assign(dataset=dataset, protocol=protocol))
    tables = {name: _front(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(), first)
              for name, parts, first in (("per_patient", patients, ["method", "patient"]),
                                         ("methods", methods, ["method"]),
                                         ("pairwise", pairs, ["gene_set", "metric", "method_a", "method_b"]))}
    pw = tables["pairwise"]
    if len(pw):
        pw["p_bh"] = np.nan
        for _, part in pw.groupby(["dataset", "protocol", "gene_set", "metric"], sort=False):
            pw.loc[part.index, "p_bh"] = stats.bh_adjust(part["p_value"].to_numpy())
    return tables


def _front(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    if frame.empty:
        return frame
    lead = ["dataset", "protocol", *first]
    return frame[lead + [c for c in frame.columns if c not in lead]]


def _patient_level_one(group: pd.DataFrame, sections: pd.DataFrame, n_boot: int, seed: int, alpha: float,
                       metrics: list[str]):
    methods = list(pd.unique(group["method"]))
    pairs = list(combinations(range(len(methods)), 2))
    index, values, members = _nested_arrays(group, methods, metrics)
    # Spot- and section-level metrics have one value per section and gene set (from per_section, seeds
    # averaged): it fills that metric's column for every gene of the section, so resampling genes keeps it.
    by_section = [k for k, m in enumerate(metrics) if m not in group]
    section_means = sections.groupby(["patient", "section", "method"], sort=False)[
        [f"{s}_{metrics[k]}" for s in stats.GENE_SETS for k in by_section]].mean() if by_section else None
    blocks = _section_blocks(index)
    labels = [p for p, _ in blocks]
    ran = sections.groupby(["method", "patient"], sort=False).agg(
        n_sections=("section", "nunique"), sections=("section", lambda s: ",".join(sorted(set(s)))),
        folds=("fold", lambda f: ",".join(str(x) for x in sorted(set(f)))), n_seeds=("seed", "nunique"))
    noise = _seed_noise(sections, metrics)
    per_patient: dict[tuple[str, str], dict] = {}
    per_method = {m: {"method": m} for m in methods}
    pair_rows: list[dict] = []
    for s in stats.GENE_SETS:
        mask = members[f"in_{s}"].to_numpy(dtype=bool)
        arrays = [values[rows[mask[rows]]] for _, rows in blocks]
        for (patient, rows), array in zip(blocks, arrays):
            for k in by_section:
                section = str(index["section"].iat[rows[0]])
                for mi, method in enumerate(methods):
                    key = (patient, section, method)
                    array[:, mi, k] = (section_means.at[key, f"{s}_{metrics[k]}"]
                                       if key in section_means.index else np.nan)
        nested = resampling.nested_means(arrays, labels, pairs)
        n_defined = np.isfinite(nested["per_patient"]).sum(axis=0)  # (methods, metrics)
        boot = None
        if len(nested["patients"]) >= MIN_PATIENTS:
            boot = resampling.hierarchical_bootstrap(arrays, labels, n_boot=n_boot, seed=seed, pairs=pairs)
        for mi, method in enumerate(methods):
            for k, metric in enumerate(metrics):
                col = f"{s}_{metric}"
                for pi, patient in enumerate(nested["patients"]):
                    if (method, patient) in ran.index:
                        per_patient.setdefault((method, patient), {})[col] = float(nested["per_patient"][pi, mi, k])
                row = per_method[method]
                column = nested["per_patient"][:, mi, k]
                row[f"patient_{col}"] = float(nested["overall"][mi, k])
                row[f"patient_{col}_sd"] = float(np.nanstd(column, ddof=1)) if n_defined[mi, k] > 1 else np.nan
                low = high = np.nan
                if boot is not None and n_defined[mi, k] >= MIN_PATIENTS:
                    lo, hi = resampling.percentile_interval(boot["overall"][:, mi, k], alpha)
                    low, high = float(lo), float(hi)
                row[f"patient_{col}_ci_low"], row[f"patient_{col}_ci_high"] = low, high
        for k, metric in enumerate(metrics):  # every ranked metric: the headline first
            if stats.higher_is_better(metric) is None:
                continue
            for pj, (a, b) in enumerate(pairs):
                pair_rows.append(_pair_row(methods[a], methods[b], s, nested, boot, pj, k, seed, alpha, metric))
    patient_rows = []
    for (method, patient), scores in per_patient.items():
        facts = ran.loc[(method, patient)].to_dict()
        sd = noise.loc[(method, patient)].to_dict() if (method, patient) in noise.index else {}
        patient_rows.append({"method": method, "patient": patient, **facts, **scores, **sd})
    per_patient_table = pd.DataFrame(patient_rows)
    for method, row in per_method.items():
        mine = per_patient_table[per_patient_table["method"] == method] if len(per_patient_table) else per_patient_table
        row["n_patients"] = int(len(mine))
        row["n_sections"] = int(mine["n_sections"].sum()) if len(mine) else 0
        row["patient_ci_note"] = "" if len(mine) >= MIN_PATIENTS else NO_INTERVAL
        for col in stats.aggregate_columns(metrics):  # training noise: the typical per-patient sd over seeds
            values = mine[f"{col}_seed_sd"] if f"{col}_seed_sd" in mine else pd.Series(dtype=float)
            row[f"patient_{col}_seed_sd"] = float(values.mean()) if values.notna().any() else np.nan
    return per_patient_table, pd.DataFrame(list(per_method.values())), pd.DataFrame(pair_rows)


def _pair_row(a: str, b: str, gene_set: str, nested: dict, boot: dict | None, pj: int, k: int, seed: int,
              alpha: float, metric: str = PAIR_METRIC) -> dict:
    d = nested["per_patient_difference"][:, pj, k]
    defined = np.isfinite(d)
    test = resampling.sign_flip_test(d, seed=seed)
    low = high = np.nan
    if boot is not None and defined.sum() >= MIN_PATIENTS:
        lo, hi = resampling.percentile_interval(boot["difference"][:, pj, k], alpha)
        low, high = float(lo), float(hi)
    patients = [str(p) for p in nested["patients"][defined]]
    return {"gene_set": gene_set, "metric": metric, "method_a": a, "method_b": b,
            "n_patients": int(defined.sum()), "patients": ",".join(patients),
            "differences": json.dumps({p: float(v) for p, v in zip(patients, d[defined])}),
            "mean_difference": float(nested["difference"][pj, k]),
            "n_a_better": int((d[defined] > 0).sum()), "n_b_better": int((d[defined] < 0).sum()),
            "ci_low": low, "ci_high": high, "ci_note": "" if defined.sum() >= MIN_PATIENTS else NO_INTERVAL,
            "test": "sign-flip permutation, exact" if test["exact"] else
                    f"sign-flip permutation, Monte-Carlo ({test['n_patterns']} patterns)",
            "p_value": test["p_value"], "p_min": test["p_min"], "n_patterns": test["n_patterns"]}


def friedman_from_patients(per_patient: pd.DataFrame, value: str = "acg_pearson", alpha: float = 0.05) -> dict:
    """Friedman/Nemenyi/CD with patients as blocks, on each patient's score (seeds and sections averaged)."""
    if per_patient.empty:
        return {"value": value, "unit": "patient", "blocks": [], **stats.friedman_nemenyi(pd.DataFrame(), alpha=alpha)}
    matrix = per_patient.set_index(["dataset", "protocol", "patient", "method"])[value].unstack("method")
    matrix = matrix.reindex(columns=list(pd.unique(per_patient["method"])))
    metric = value.split("_", 1)[-1]
    out = stats.friedman_nemenyi(matrix, higher_is_better=stats.higher_is_better(metric) is not False, alpha=alpha)
    return {"value": value, "unit": "patient", "blocks": [[str(x) for x in b] for b in matrix.index], **out}
