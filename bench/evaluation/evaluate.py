"""Recompute every score, test and clustering result of a run from its saved job folders (no retraining).

``python -m bench evaluate <run-dir>`` reads each complete job folder (``predictions.npz``,
``train_gene_stats.csv``, ``result.json``) and writes tidy tables under ``<run-dir>/results/`` (the command
then logs the aggregates to MLflow through ``bench.run.tracking.log_evaluation``). Pure: no tracking here.

- ``per_gene.parquet``   one row per job x gene: Pearson r and its p-value, Spearman rho, MSE, MAE, the
                         gene's test mean/variance and training mean/variance, and HEG/HVG membership
- ``per_spot.parquet``   one row per job x test spot: Pearson r over the panel genes
- ``per_job.parquet``    ACG/HEG/HVG of each metric, undefined counts, mean per-spot r, clustering, timing
- ``per_method.parquet`` mean, sd over folds and gene-resampled bootstrap CI of every aggregate (within these
                         test sections); ``patient_*``: the same scores per section, averaged within each
                         patient, then over patients, with the hierarchical-bootstrap interval across patients
- ``pairwise.parquet``   Wilcoxon signed-rank over genes for every pair of methods, BH-corrected (within these
                         test sections: genes are not independent replicates of new patients)
- ``per_section_gene.parquet`` one row per job x test section x gene: the per-gene scores within that section
- ``per_section.parquet`` one row per job x test section: its ACG/HEG/HVG (per-section r, no pooling)
- ``per_fold.parquet``   one row per method x fold: pooled aggregates averaged over seeds, their sd over seeds
                         (training noise) and the per-section aggregates averaged over the fold's sections
- ``per_patient.parquet`` one row per method x patient: seeds averaged within each section, sections averaged
- ``patient_pairwise.parquet`` per pair and gene set: per-patient differences, their hierarchical-bootstrap
                         interval, the exact sign-flip permutation p (and the smallest p attainable), BH
- ``friedman.json``      Friedman test over patients, Nemenyi post-hoc p-values, average ranks and critical
                         difference
- ``clustering.parquet`` ARI/NMI per job x test section, for predicted and true expression, with the reference
- ``summary.csv``        one line per method (the columns the runner has always printed);
                         ``acg_pearson_text`` and ``heg_pearson_text`` say each score as the report and the
                         terminal do (``bench.evaluation.cells``: "undefined (constant prediction)" where the
                         number is empty)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import MissingFileError
from bench.evaluation import clustering, metric_registry, patients, stats
from bench.evaluation.cells import score_cell
from bench.evaluation.published import pcc_per_spot
from bench.records import find_job_folders, run_setting, setting_folders

log = logging.getLogger(__name__)
RESULTS_DIR = "results"
TRAIN_STATS = "train_gene_stats.csv"
# summary.csv: the headline scores are the patient-level ones (per-section r averaged within each patient,
# then over patients), the same numbers as the terminal and the report's first card; ``pooled_acg_pearson``
# is the per-job pooled r (the job's in-run score) averaged over jobs, kept beside it. The *_text columns say
# each headline score in words where it is not a number (bench.evaluation.cells); the leak columns name a
# split that kept test patients' other sections in training.
SUMMARY_COLUMNS = ["method", "kind", "n_jobs", "n_patients", "acg_pearson", "acg_pearson_sd", "acg_pearson_ci_low",
                   "acg_pearson_ci_high", "heg_pearson", "hvg_pearson", "svg_pearson", "mean_rank", "n_rankings",
                   "pooled_acg_pearson", "pooled_acg_pearson_sd", "n_undefined_pearson", "fit_seconds",
                   "predict_seconds", "pretrained", "random_init", "ari", "dataset", "protocol",
                   "acg_pearson_text", "heg_pearson_text", "leaks_patients", "leaking_patients"]


@dataclass
class Evaluation:
    per_gene: pd.DataFrame
    per_spot: pd.DataFrame
    per_job: pd.DataFrame
    per_method: pd.DataFrame
    pairwise: pd.DataFrame
    friedman: dict
    clustering: pd.DataFrame
    summary: pd.DataFrame
    settings: dict = field(default_factory=dict)
    per_section_gene: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_section: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_fold: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_patient: pd.DataFrame = field(default_factory=pd.DataFrame)
    patient_pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)


def job_scores(truth, pred, sets: dict[str, np.ndarray], metrics=None, counts=None, coords=None,
               section_ids=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(per-gene values, ``<set>_<metric>`` aggregates) of one job's pooled test spots: the one function
    behind the job's in-run score (``bench.run.job``) and the evaluation's pooled scores."""
    metrics = metric_registry.resolve(None if metrics is None else list(metrics))
    block = metric_registry.Block(truth, pred, counts, coords, section_ids)
    values = metric_registry.per_gene(block, metrics)
    aggregates = metric_registry.aggregates(block, metrics, values, sets)
    values = metric_registry.with_columns_beside(block, values)  # Pearson r's p-value
    t = block.truth  # what HEG and a reader need beside the scores
    values["truth_mean"] = t.mean(axis=0)
    values["truth_variance"] = t.var(axis=0, ddof=1) if len(t) > 1 else np.full(t.shape[1], np.nan)
    return values, aggregates


HEADLINE_SCORES = ("acg_pearson", "heg_pearson", "hvg_pearson", "svg_pearson", "n_genes", "n_undefined_pearson")


def headline_scores(truth, pred, train_variance, train_morans_i=None) -> dict[str, float]:
    """A job's in-run scores: the pooled Pearson r of each gene set (``HEADLINE_SCORES``), as the evaluation
    computes them (``job_scores``, one definition). Only the built-in headline metric: the job calls this
    after writing its folder, and every other metric is left to the evaluation."""
    sets = stats.gene_sets(np.asarray(truth, np.float64).mean(axis=0), np.asarray(train_variance, np.float64),
                           train_morans_i=None if train_morans_i is None else np.asarray(train_morans_i, np.float64))
    _, aggregates = job_scores(truth, pred, sets, metrics=[metric_registry.HEADLINE])
    return {k: aggregates[k] for k in HEADLINE_SCORES}


def folder_headline_scores(folder: Path) -> dict[str, float]:
    """``headline_scores`` of a complete job folder (its saved predictions and training statistics)."""
    with np.load(Path(folder) / "predictions.npz", allow_pickle=False) as saved:
        truth, pred = saved["truth"], saved["prediction"]
    train = pd.read_csv(Path(folder) / TRAIN_STATS, float_precision="round_trip")
    return headline_scores(truth, pred, train["train_variance"], train.get("train_morans_i"))


def evaluate_job(result: dict, arrays: dict, train_stats: pd.DataFrame | None, n_pcs: int = clustering.N_PCS,
                 seed: int = 0, metrics=None) -> dict:
    """Every per-gene, per-spot, per-job and clustering number of one job (pure: arrays in, tables out)."""
    job = {k: result["job"][k] for k in stats.JOB_COLUMNS}
    genes = [str(g) for g in arrays["genes"]]
    truth, pred = arrays["truth"], arrays["prediction"]
    counts, coords = arrays.get("counts"), arrays.get("array_coords")
    t64 = np.asarray(truth, dtype=np.float64)
    train_mean = train_var = train_moran = None
    if train_stats is not None:
        stats_by_gene = train_stats.set_index("gene").reindex(genes)
        train_mean = stats_by_gene["train_mean"].to_numpy(dtype=np.float64)
        train_var = stats_by_gene["train_variance"].to_numpy(dtype=np.float64)
        if "train_morans_i" in stats_by_gene:
            train_moran = stats_by_gene["train_morans_i"].to_numpy(dtype=np.float64)
    sets = stats.gene_sets(t64.mean(axis=0), train_var, train_morans_i=train_moran)
    values, aggregates = job_scores(truth, pred, sets, metrics, counts, coords, arrays["section_ids"])
    per_gene = pd.DataFrame({**job, "gene": genes, **values,
                             "train_mean": train_mean if train_mean is not None else np.nan,
                             "train_variance": train_var if train_var is not None else np.nan,
                             "train_morans_i": train_moran if train_moran is not None else np.nan,
                             **{f"in_{s}": mask for s, mask in sets.items()}})
    spot_r = pcc_per_spot(truth, pred)  # the registry's pcc_spot, per spot over the whole panel
    per_spot = pd.DataFrame({**job, "section": np.asarray(arrays["section_ids"], dtype=str),
                             "spot": np.asarray(arrays["spot_ids"], dtype=str), "pearson": spot_r})
    labels = {c: arrays[c] for c in clustering.REFERENCES if c in arrays}
    domains = clustering.domain_scores(pred, truth, arrays["section_ids"], labels, n_pcs=n_pcs, seed=seed)
    domains.insert(0, "job_key", result.get("job_key", ""))
    for k, v in reversed(job.items()):
        domains.insert(0, k, v)
    patient_of, patient_source = patients.job_patients(result, arrays["section_ids"])
    section_genes, section_rows = patients.score_sections(job, truth, pred, arrays["section_ids"], genes, sets,
                                                          patient_of, metrics, counts, coords)
    finite_spots = np.isfinite(spot_r)
    row = {**job, "job_key": result.get("job_key", ""), "kind": result.get("kind", "method"),
           "mlflow_run_id": result.get("mlflow_run_id"), "n_test_spots": int(len(truth)), **aggregates,
           "test_sections": ",".join(patient_of), "test_patients": ",".join(dict.fromkeys(patient_of.values())),
           "n_test_patients": len(set(patient_of.values())), "patient_source": patient_source,
           # Whether the split kept a test patient's other sections in training (loso, published), and each
           # test section's patient, in the order of test_sections (which patients' sections leaked).
           "split_leaks_patients": str(result.get("split_leaks_patients")).lower() == "true",
           "test_section_patients": ",".join(patient_of.values()),
           "hvg_available": bool(sets["hvg"].any()), "svg_available": bool(sets["svg"].any()),
           "svg_genes": ",".join(g for g, m in zip(genes, sets["svg"]) if m),
           "counts_available": counts is not None,
           "spot_pearson": float(spot_r[finite_spots].mean()) if finite_spots.any() else float("nan"),
           "n_undefined_spot_pearson": int((~finite_spots).sum())}
    for source in ("prediction", "truth"):
        part = domains[domains["expression"] == source]
        row[f"ari_{source}"] = float(part["ari"].mean()) if len(part) else float("nan")
        row[f"nmi_{source}"] = float(part["nmi"].mean()) if len(part) else float("nan")
    row["clustering_reference"] = "+".join(sorted(set(domains["reference"]))) if len(domains) else ""
    timing, facts = result.get("timing", {}), result.get("facts", {})
    row.update(fit_seconds=timing.get("fit_seconds"), predict_seconds=timing.get("predict_seconds"),
               pretrained=bool(facts.get("pretrained", False)), random_init=random_init(facts),
               # The frozen encoder whose embeddings the method read ('' for methods that read patches).
               encoder=str(facts.get("encoder") or ""),
               encoder_weights_sha256=str(facts.get("encoder_weights_sha256") or ""))
    return {"per_gene": per_gene, "per_spot": per_spot, "per_job": row, "clustering": domains,
            "per_section_gene": section_genes, "per_section": section_rows}


def leaking_patients(jobs: pd.DataFrame) -> str:
    """The patients with more than one test section over these jobs (comma-separated): under a split that
    leaks, each was tested on one section while its others stayed in training."""
    sections: dict[str, set] = {}
    for names, owners in zip(jobs["test_sections"], jobs["test_section_patients"]):
        for section, patient in zip(str(names).split(","), str(owners).split(",")):
            sections.setdefault(patient, set()).add(section)
    return ",".join(p for p, s in sections.items() if len(s) > 1)


def random_init(facts: dict) -> bool:
    """Whether the job's image encoder started from random initialisation although the method uses one
    that starts from pretrained weights (a torchvision backbone that could not load its ImageNet weights,
    or a frozen encoder without its weights): its scores are then not comparable with published ones.
    Networks trained from scratch by design (HisToGene, Hist2ST, THItoGene) and the controls are not."""
    uses_pretrained = bool(facts.get("imagenet_encoder") or facts.get("encoder"))
    return uses_pretrained and not facts.get("pretrained", False)


def load_job(folder: Path) -> tuple[dict, dict, pd.DataFrame | None]:
    """(result.json, arrays of predictions.npz, training gene statistics or None for older job folders)."""
    folder = Path(folder)
    result = json.loads((folder / "result.json").read_text())
    with np.load(folder / "predictions.npz", allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    stats_path = folder / TRAIN_STATS
    train_stats = pd.read_csv(stats_path, float_precision="round_trip") if stats_path.is_file() else None
    if train_stats is None:
        log.warning("%s: no %s (written before HVG was saved); HVG scores are NaN", folder, TRAIN_STATS)
    if "counts" not in arrays:
        log.warning("%s: no raw counts saved with the predictions (written before they were); the AUCs at "
                    "count cut-offs are NaN", folder)
    if not any(c in arrays for c in clustering.REFERENCES):
        log.warning("%s: no domain labels saved with the predictions; no clustering scores", folder)
    return result, arrays, train_stats


def evaluate_jobs(folders: list[Path], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                  n_pcs: int = clustering.N_PCS, metrics=None) -> Evaluation:
    """Every table of the evaluation from these job folders. ``metrics``: names (default: every registered
    metric; an unknown name raises ``metric_registry.UnknownMetricError`` before anything is read). A metric
    whose function fails is left out of every table with a warning naming it (``settings["failed_metrics"]``);
    the headline Pearson r failing is a bug and raises."""
    names = metric_registry.names(metric_registry.resolve(metrics))
    jobs = [load_job(f) for f in folders]
    failed: dict[str, str] = {}
    while True:
        try:
            parts = [evaluate_job(*job, n_pcs=n_pcs, seed=seed, metrics=names) for job in jobs]
            break
        except metric_registry.MetricFailedError as exc:
            if exc.metric == metric_registry.HEADLINE:
                raise
            log.warning("%s; left out of the evaluation (the job folders are untouched)", exc)
            failed[exc.metric] = str(exc)
            names = [n for n in names if n != exc.metric]
    per_gene = _concat([p["per_gene"] for p in parts])
    per_spot = _concat([p["per_spot"] for p in parts])
    per_job = pd.DataFrame([p["per_job"] for p in parts])
    domains = _concat([p["clustering"] for p in parts])
    section_genes = _concat([p["per_section_gene"] for p in parts])
    per_section = pd.DataFrame([r for p in parts for r in p["per_section"]])
    per_fold = per_patient = patient_pairwise = pd.DataFrame()
    if parts:
        per_method = stats.method_aggregates(per_job, per_gene, n_boot=n_boot, seed=seed, alpha=alpha,
                                             metrics=names)
        extra = per_job.groupby(["dataset", "protocol", "method"], sort=False).agg(
            kind=("kind", "first"), **{f"n_undefined_{m}": (f"n_undefined_{m}", "sum") for m in names},
            spot_pearson=("spot_pearson", "mean"),
            ari_prediction=("ari_prediction", "mean"), nmi_prediction=("nmi_prediction", "mean"),
            ari_truth=("ari_truth", "mean"), nmi_truth=("nmi_truth", "mean"),
            fit_seconds=("fit_seconds", "sum"), predict_seconds=("predict_seconds", "sum"),
            pretrained=("pretrained", "all"), random_init=("random_init", "any"),
            leaks_patients=("split_leaks_patients", "any")).reset_index()
        extra["leaking_patients"] = [leaking_patients(per_job[(per_job["dataset"] == r.dataset)
                                                              & (per_job["protocol"] == r.protocol)
                                                              & (per_job["method"] == r.method)])
                                     if r.leaks_patients else "" for r in extra.itertuples()]
        per_method = per_method.merge(extra, on=["dataset", "protocol", "method"], how="left")
        pairwise = stats.pairwise_tests(per_gene, "pearson")
        level = patients.patient_level(section_genes, per_section, n_boot=n_boot, seed=seed, alpha=alpha,
                                       metrics=names)
        per_patient, patient_pairwise = level["per_patient"], level["pairwise"]
        per_method = per_method.merge(level["methods"], on=["dataset", "protocol", "method"], how="left")
        per_method = per_method.merge(stats.mean_ranks(per_method, names), on=["dataset", "protocol", "method"],
                                      how="left")
        per_fold = fold_table(per_job, per_section, names)
        friedman = patients.friedman_from_patients(per_patient, "acg_pearson", alpha=alpha)
        friedman["by_metric"] = {f"acg_{m}": patients.friedman_from_patients(per_patient, f"acg_{m}", alpha=alpha)
                                 for m in names if stats.higher_is_better(m) is not None and f"acg_{m}" in per_patient}
    else:
        per_method, pairwise, friedman = pd.DataFrame(), pd.DataFrame(), {}
    settings = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "n_pcs": n_pcs, "n_init": clustering.N_INIT,
                "n_top": stats.N_TOP, "n_jobs": len(parts), "min_patients_for_interval": patients.MIN_PATIENTS,
                "pair_correction": "Benjamini-Hochberg across pairs", "metrics": names,
                "gene_sets": list(stats.GENE_SETS), "n_svg": stats.N_SVG, "failed_metrics": failed}
    return Evaluation(per_gene, per_spot, per_job, per_method, pairwise, {**friedman, "settings": settings},
                      domains, summary_table(per_method), settings, per_section_gene=section_genes,
                      per_section=per_section, per_fold=per_fold, per_patient=per_patient,
                      patient_pairwise=patient_pairwise)


def fold_table(per_job: pd.DataFrame, per_section: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """One row per (dataset, protocol, method, fold, test sections): each pooled aggregate averaged over seeds
    with its sd over seeds (``_seed_sd``, training noise), and ``section_<aggregate>``, the per-section
    aggregates averaged over the fold's sections, then over seeds. Folds are keyed by their test sections
    too: under patient-kfold a fold index names different sections in different seeds."""
    cols = [c for c in stats.aggregate_columns(metrics) if c in per_job]
    keys = ["dataset", "protocol", "method", "fold", "test_sections"]
    grouped = per_job.groupby(keys, sort=False)
    out = grouped.agg(test_patients=("test_patients", "first"), n_seeds=("seed", "nunique")).join(
        grouped[cols].mean()).join(grouped[cols].std(ddof=1).rename(columns={c: f"{c}_seed_sd" for c in cols}))
    sections = per_section.groupby(["dataset", "protocol", "method", "fold", "seed"], sort=False)[cols].mean()
    sections = sections.join(per_job.set_index(["dataset", "protocol", "method", "fold", "seed"])["test_sections"])
    by_fold = sections.reset_index().groupby(keys, sort=False)[cols].mean()
    return out.join(by_fold.rename(columns={c: f"section_{c}" for c in cols})).reset_index()


def summary_table(per_method: pd.DataFrame) -> pd.DataFrame:
    """One line per method: the headline ACG (and HEG, HVG, SVG) Pearson r at the patient level with its sd
    across patients and interval, the mean rank across metrics, the pooled per-job ACG beside it, undefined
    counts, timing and the pretrained facts."""
    if per_method.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    pm = per_method

    def col(name):
        return pm[name] if name in pm else np.nan

    out = pd.DataFrame({
        "method": pm["method"], "kind": pm["kind"], "n_jobs": pm["n_jobs"], "n_patients": col("n_patients"),
        "acg_pearson": col("patient_acg_pearson"), "acg_pearson_sd": col("patient_acg_pearson_sd"),
        "acg_pearson_ci_low": col("patient_acg_pearson_ci_low"),
        "acg_pearson_ci_high": col("patient_acg_pearson_ci_high"),
        "heg_pearson": col("patient_heg_pearson"), "hvg_pearson": col("patient_hvg_pearson"),
        "svg_pearson": col("patient_svg_pearson"), "mean_rank": col("mean_rank"), "n_rankings": col("n_rankings"),
        "pooled_acg_pearson": pm["acg_pearson"], "pooled_acg_pearson_sd": pm["acg_pearson_sd"],
        "n_undefined_pearson": pm["n_undefined_pearson"], "fit_seconds": pm["fit_seconds"],
        "predict_seconds": pm["predict_seconds"], "pretrained": pm["pretrained"], "random_init": pm["random_init"],
        "ari": pm["ari_prediction"], "dataset": pm["dataset"], "protocol": pm["protocol"],
        "leaks_patients": pm.get("leaks_patients", False), "leaking_patients": pm.get("leaking_patients", "")})
    # Every method here ran, so an empty score is an undefined r; the words keep it from reading as "not run".
    out["acg_pearson_text"] = [score_cell(v) for v in out["acg_pearson"]]
    out["heg_pearson_text"] = [score_cell(v) for v in out["heg_pearson"]]
    return out[SUMMARY_COLUMNS].reset_index(drop=True)


def write_tables(evaluation: Evaluation, results_dir: Path) -> None:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in ("per_gene", "per_spot", "per_job", "per_method", "pairwise", "clustering", "per_section_gene",
                 "per_section", "per_fold", "per_patient", "patient_pairwise"):
        getattr(evaluation, name).to_parquet(results_dir / f"{name}.parquet", index=False)
    (results_dir / "friedman.json").write_text(json.dumps(evaluation.friedman, indent=1, default=_json_default))
    evaluation.summary.to_csv(results_dir / "summary.csv", index=False)


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate_run(run_dir: Path, folders: list[Path] | None = None, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, n_pcs: int = clustering.N_PCS, metrics=None) -> Evaluation:
    """Evaluate the given job folders (default: the complete jobs of the setting the run folder's
    ``config.json`` names, its last run's; every complete job of a folder without one) and write the tables
    to ``<run_dir>/results/``. Logging them to MLflow is the tracker's job (``bench.run.tracking``)."""
    run_dir = Path(run_dir)
    metric_registry.resolve(metrics)  # an unknown name is refused before any file is read or written
    if folders is None:
        if not (run_dir / "jobs").is_dir():
            raise MissingFileError(f"{run_dir}: no jobs/ folder; is this the --out folder of a benchmark run?")
        recorded = run_setting(run_dir)
        folders = setting_folders(run_dir, *recorded) if recorded else find_job_folders(run_dir)
    evaluation = evaluate_jobs(folders, n_boot=n_boot, seed=seed, alpha=alpha, n_pcs=n_pcs, metrics=metrics)
    write_tables(evaluation, run_dir / RESULTS_DIR)
    return evaluation
