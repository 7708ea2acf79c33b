"""Tabular sections of the report (tests, folds, cost, provenance), as plain data (``bench.report.blocks``);
see ``bench.report.build`` for the page and ``bench.report.maps`` for the tissue sections."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.preprocess import TARGET_DESCRIPTIONS
from bench.evaluation.cells import NOT_RUN
from bench.evaluation.patients import PAIR_METRIC  # the headline metric the verdict tests
from bench.report import figures as figures
from bench.report.blocks import Definitions, Details, Figure, Heading, Paragraph, Section, Table
from bench.report.data import RunResults, distinct
from bench.report.formatting import fmt, interval, kind_label, pretrained_label, score


def _alpha(res: RunResults) -> float:
    return float(res.friedman.get("settings", {}).get("alpha", res.friedman.get("alpha", 0.05)))


# ---- pairwise tests and critical difference -------------------------------------------------------------

def patient_pairwise_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    alpha = _alpha(res)
    header = ["Gene set", "Method A", "Method B", "Patients", "Mean Δr (A − B)", "95% CI across patients",
              "A better on", "p (sign-flip)", "Smallest attainable p", "p (BH)", f"Significant (alpha = {alpha:g})"]
    rows = [[r["gene_set"].upper(), r["method_a"], r["method_b"], fmt(r["n_patients"], "int"),
             fmt(r["mean_difference"]), interval(r["ci_low"], r["ci_high"]),
             f"{fmt(r['n_a_better'], 'int')} of {fmt(r['n_patients'], 'int')}", fmt(r["p_value"], "p"),
             fmt(r["p_min"], "p"), fmt(r["p_bh"], "p"), fmt(bool(np.isfinite(r["p_bh"]) and r["p_bh"] < alpha))]
            for r in _headline_pairs(res.patient_pairwise).to_dict("records")]
    return header, rows


def _headline_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the headline metric (Pearson r); every other metric's tests stay in
    ``patient_pairwise.parquet`` and its intervals in the metric matrix."""
    if "metric" not in table or table.empty:
        return table
    return table[table["metric"] == PAIR_METRIC]


def pairwise_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    alpha = _alpha(res)
    header = ["Method A", "Method B", "Folds", "Genes", "Median Δr (A − B)", "Mean Δr", "A better on",
              "p", "p (BH)", f"Significant (alpha = {alpha:g})"]
    rows = [[r["method_a"], r["method_b"], fmt(r["n_folds"], "int"), fmt(r["n_genes"], "int"),
             fmt(r["median_difference"]), fmt(r["mean_difference"]), fmt(r["share_improved"], "pct"),
             fmt(r["p_value"], "p"), fmt(r["p_bh"], "p"),
             fmt(bool(np.isfinite(r["p_bh"]) and r["p_bh"] < alpha))]
            for r in res.pairwise.to_dict("records")]
    return header, rows


def rank_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    ranks = res.friedman.get("average_ranks") or {}
    order = sorted(ranks, key=ranks.get)
    nemenyi = res.friedman.get("nemenyi_p") or {}
    top = order[0] if order else None
    rows = [[m, fmt(ranks[m]), fmt(nemenyi.get(top, {}).get(m) if m != top else None, "p")] for m in order]
    return ["Method", "Average rank (1 = best)", "Nemenyi p vs top-ranked"], rows


def significance_section(res: RunResults) -> Section:
    header, rows = patient_pairwise_rows(res)
    parts = [Heading("Across patients: what carries over to new patients"),
             Table("patient_pairwise", header, rows, numeric_from=3,
                   caption="Paired over patients: each patient's mean over its test sections of the per-section "
                           "difference in r. Two-sided sign-flip permutation test of the mean difference (exact "
                           "over all 2^n sign patterns; its smallest attainable p is 2/2^n), Benjamini-Hochberg "
                           "across pairs; 95% interval from the hierarchical bootstrap (patients, then sections, "
                           "then genes), none with fewer than 3 patients.")
             if rows else Paragraph("Fewer than two methods: no pairwise tests.", "note")]
    header, rows = pairwise_rows(res)
    if rows:
        parts += [Heading("Within these test sections: genes as replicates"),
                  Table("pairwise", header, rows, numeric_from=2,
                        caption="Two-sided Wilcoxon signed-rank test over genes on per-gene r averaged over the "
                                "folds both methods ran; Benjamini-Hochberg correction across all pairs. Genes of "
                                "a section are neither independent nor new patients: this describes the sections "
                                "tested, and the verdict does not rest on it.")]
    f = res.friedman
    unit = "patient(s)" if f.get("unit") == "patient" else "fold(s)"
    if f.get("p_value") is not None and f.get("average_ranks"):
        parts.append(Paragraph(
            f"Friedman test over {fmt(f['n_blocks'], 'int')} {unit} on each one's ACG r: statistic "
            f"{fmt(f['statistic'])}, p = {fmt(f['p_value'], 'p')}; critical difference of average ranks "
            f"{fmt(f['critical_difference'])} (Nemenyi, alpha = {f.get('alpha', 0.05):g})."))
        parts.append(Figure(figures.cd_diagram(f["average_ranks"], f["critical_difference"], f.get("alpha", 0.05)),
                            "critical difference diagram",
                            f"Critical-difference diagram: average rank of each method over {unit} (1 = best); "
                            "methods joined by a green bar are within the critical difference of each other."))
        header, rows = rank_rows(res)
        parts.append(Table("ranks", header, rows))
    else:
        parts.append(Paragraph(f"No Friedman test: {f.get('note') or 'not computed'}.", "note"))
    excluded = f.get("excluded_methods") or []
    if excluded:
        parts.append(Paragraph(f"Left out of the rank test (no defined ACG r): {', '.join(excluded)}.", "note"))
    return Section("significance", "Tests", "Is the difference real?", parts)


# ---- folds ------------------------------------------------------------------------------------------------

def fold_keys(res: RunResults) -> list[tuple[int, int]]:
    return sorted({(int(s), int(f)) for s, f in zip(res.per_job["seed"], res.per_job["fold"])})


def fold_test_sections(res: RunResults, seed: int, fold: int) -> str:
    for row in res.per_job[(res.per_job["seed"] == seed) & (res.per_job["fold"] == fold)].to_dict("records"):
        result = res.jobs.get(row["job_key"], {}).get("result", {})
        if result.get("test_sections"):
            return ", ".join(map(str, result["test_sections"]))
    return fmt(None)


def fold_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    methods = res.methods
    by_job = res.per_job.set_index(["method", "seed", "fold"])["acg_pearson"]
    rows = []
    for seed, fold in fold_keys(res):
        row = [fmt(seed, "int"), fmt(fold, "int"), fold_test_sections(res, seed, fold)]
        row += [score(by_job.loc[(m, seed, fold)]) if (m, seed, fold) in by_job.index else NOT_RUN for m in methods]
        rows.append(row)
    return ["Seed", "Fold", "Test sections", *methods], rows


def job_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Seed", "Fold", "Test spots", "ACG r", "HEG r", "HVG r", "Spot r", "Undefined genes",
              "ARI", "MLflow run"]
    rows = [[r["method"], fmt(r["seed"], "int"), fmt(r["fold"], "int"), fmt(r["n_test_spots"], "int"),
             score(r["acg_pearson"]), score(r["heg_pearson"]), score(r["hvg_pearson"]), fmt(r["spot_pearson"]),
             fmt(r["n_undefined_pearson"], "int"), fmt(r["ari_prediction"]), fmt(r["mlflow_run_id"])]
            for r in res.per_job.to_dict("records")]
    return header, rows


def patient_rows(res: RunResults) -> tuple[list[str], list[list]]:
    """One row per patient: its test sections and each method's ACG r (per-section r averaged over its
    sections and seeds), with the sd over seeds beneath when several seeds ran."""
    table = res.per_patient
    if table.empty:
        return [], []
    methods = res.methods
    by = table.set_index(["method", "patient"])
    rows = []
    for patient in pd.unique(table["patient"]):
        mine = table[table["patient"] == patient]
        row = [str(patient), ", ".join(distinct(",".join(mine["sections"]).split(",")))]
        for m in methods:
            if (m, patient) not in by.index:
                row.append(NOT_RUN)
                continue
            r = by.loc[(m, patient)]
            noise = r.get("acg_pearson_seed_sd")
            value = score(r["acg_pearson"])
            row.append((value, f"seed sd {fmt(noise)}") if r["n_seeds"] > 1 else value)
        rows.append(row)
    return ["Patient", "Test sections", *methods], rows


def folds_section(res: RunResults) -> Section:
    blocks = []
    header, rows = patient_rows(res)
    if rows:
        blocks.append(Table("patients", header, rows, numeric_from=2,
                            caption="ACG Pearson r of each method on each patient: r per gene within each test "
                                    "section, averaged over genes, over seeds (sd over seeds beneath, when several "
                                    "ran: training noise) and over the patient's sections. These are the values the "
                                    "patient-level tests and intervals use."))
    header, rows = fold_rows(res)
    blocks.append(Table("folds", header, rows, numeric_from=3,
                        caption="ACG Pearson r of each method on each fold, pooled over the fold's test spots."))
    header, rows = job_rows(res)
    blocks.append(Details("Every job (with its MLflow run id)", [Table("jobs", header, rows)]))
    return Section("folds", "Folds", "Per patient and per fold", blocks)


# ---- cost ---------------------------------------------------------------------------------------------------

def timing_frame(res: RunResults) -> pd.DataFrame:
    """One row per job: its result.json timing and memory."""
    rows = []
    for r in res.per_job.to_dict("records"):
        timing = res.jobs.get(r["job_key"], {}).get("result", {}).get("timing", {})
        rows.append({"method": r["method"], **{k: timing.get(k) for k in (
            "fit_seconds", "predict_seconds", "train_spots_per_second", "predict_spots_per_second", "peak_rss_mb",
            "peak_gpu_mb", "device", "clock")}})
    frame = pd.DataFrame(rows)
    for c in ("fit_seconds", "predict_seconds", "train_spots_per_second", "predict_spots_per_second",
              "peak_rss_mb", "peak_gpu_mb"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame


def timing_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    frame = timing_frame(res)
    totals = res.per_method.set_index("method")
    header = ["Method", "Device", "Clock", "Fit s / fold", "Predict s / fold", "Fit s (total)", "Train spots/s",
              "Predict spots/s", "Peak RSS MB", "Peak GPU MB"]
    rows = []
    for m in res.methods:
        f = frame[frame["method"] == m]
        rows.append([m, ", ".join(distinct(f["device"])) or fmt(None), ", ".join(distinct(f["clock"])) or fmt(None),
                     fmt(f["fit_seconds"].mean(), "s"), fmt(f["predict_seconds"].mean(), "s"),
                     fmt(totals.loc[m, "fit_seconds"], "s"), fmt(f["train_spots_per_second"].mean(), "rate"),
                     fmt(f["predict_spots_per_second"].mean(), "rate"), fmt(f["peak_rss_mb"].max(), "mb"),
                     fmt(f["peak_gpu_mb"].max(), "mb")])
    return header, rows


def timing_section(res: RunResults) -> Section:
    header, rows = timing_rows(res)
    return Section("cost", "Cost", "Cost: time and memory", [Table("timing", header, rows, numeric_from=3)],
                   "Per fold means of each job's result.json; peak RSS and peak GPU memory are the largest "
                   "of the method's jobs, each the job's own fit and predict high-water mark (on systems "
                   "where it cannot be restarted, peak RSS is the process's and includes earlier jobs run "
                   "in the same process).")


# ---- provenance ---------------------------------------------------------------------------------------------

def _job_field(res: RunResults, key: str) -> list[str]:
    return distinct(rec.get("result", {}).get(key) for rec in res.jobs.values())


def encoder_of(res: RunResults, method: str) -> str:
    """How a method saw the images: the frozen encoder it read embeddings of (name, weights hash, pretrained),
    or its own network trained end to end, or none."""
    facts = [rec["result"].get("facts", {}) for rec in res.jobs.values()
             if rec.get("result", {}).get("job", {}).get("method") == method]
    encoders = distinct(f"{f['encoder']} (weights {str(f.get('encoder_weights_sha256', ''))[:12]}, pretrained "
                        f"{fmt(bool(f.get('encoder_pretrained')))})" for f in facts if f.get("encoder"))
    if encoders:
        return "; ".join(encoders)
    configs = [rec.get("job_config", {}) for rec in res.jobs.values()
               if rec.get("result", {}).get("job", {}).get("method") == method]
    return "its own network, trained" if any(c.get("patch_spec") for c in configs) else "none (no images)"


def encoder_section_blocks(res: RunResults) -> list:
    """A method x encoder table when the run compares more than one frozen encoder."""
    pm = res.per_method.set_index("method")
    # The scores of the summary table: per-section r averaged within each patient, then over patients.
    rows = [[m, encoder_of(res, m), fmt(pm.loc[m, "patient_acg_pearson"]), fmt(pm.loc[m, "patient_heg_pearson"])]
            for m in res.methods if m in pm.index]
    frozen = distinct(r[1] for r in rows if "(weights" in r[1])
    if len(frozen) < 2:
        return []
    return [Heading("Method x image encoder"),
            Table("encoders", ["Method", "Image encoder", "ACG r", "HEG r"], rows, numeric_from=2, wrap=True)]


def method_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    pm = res.per_method.set_index("method")
    rows = []
    for m in res.methods:
        records = [rec for rec in res.jobs.values() if rec.get("result", {}).get("job", {}).get("method") == m]
        params = distinct(json.dumps(rec["job_config"].get("method_params", {}), sort_keys=True) for rec in records)
        run_ids = [rec["result"].get("mlflow_run_id") for rec in records]
        parents = distinct(res.mlflow_tags.get(r, {}).get("mlflow.parentRunId") for r in run_ids if r)
        rows.append([m, kind_label(pm.loc[m, "kind"]), pretrained_label(pm.loc[m]), encoder_of(res, m),
                     " | ".join(params) or fmt(None), ", ".join(parents) or fmt(None)])
    return ["Method", "Kind", "Pretrained weights used", "Image encoder", "Hyper-parameters", "MLflow parent run"], rows


def split_rows(res: RunResults) -> tuple[list[str], list[list[str]]]:
    rows = []
    for seed, fold in fold_keys(res):
        for rec in res.jobs.values():
            result = rec.get("result", {})
            job = result.get("job", {})
            if job.get("seed") == seed and job.get("fold") == fold:
                rows.append([fmt(seed, "int"), fmt(fold, "int"), ", ".join(result.get("train_sections", [])),
                             ", ".join(result.get("test_sections", [])), fmt(result.get("n_train_spots"), "int"),
                             fmt(result.get("n_test_spots"), "int")])
                break
    return ["Seed", "Fold", "Train sections", "Test sections", "Train spots", "Test spots"], rows


def provenance_section(res: RunResults) -> Section:
    cfg = res.config
    tags = list(res.mlflow_tags.values())
    commits = distinct(t.get("git_commit") for t in tags)
    versions = {}
    for t in tags:
        for k, v in t.items():
            if k.startswith("version."):
                versions.setdefault(k[len("version."):], [])
                if v not in versions[k[len("version."):]]:
                    versions[k[len("version."):]].append(v)
    results = [r["result"] for r in res.jobs.values() if r.get("result")]
    splits = distinct(f"{Path(r.get('split_file', '')).name} (sha256 {r.get('split_sha256')})" for r in results)
    panels = _job_field(res, "panel_sha256")
    leaks = _job_field(res, "split_leaks_patients")
    n_genes = distinct(res.per_job["n_genes"].astype(int)) if "n_genes" in res.per_job else []
    items = [("Run folder", str(res.run_dir.resolve())),
             ("Dataset", cfg.get("dataset") or ", ".join(distinct(res.per_method["dataset"]))),
             ("Protocol", cfg.get("protocol") or ", ".join(distinct(res.per_method["protocol"]))),
             ("Leaks patients across folds", ", ".join(fmt(v == "True") for v in leaks) or fmt(None)),
             ("Patients and data options", ("; ".join(_job_field(res, "patients_from")) or "not recorded")
              + " | data options: " + (", ".join(f"{k}={v}" for k, v in (cfg.get("data_options") or {}).items())
                                       or "none")),
             ("Seeds", ", ".join(str(s) for s in distinct(res.per_job["seed"]))),
             ("Folds evaluated", f"{len(fold_keys(res))} (fold indices {', '.join(distinct(res.per_job['fold']))})"),
             ("Split files", "; ".join(str(s) for s in splits) or fmt(None)),
             ("Gene panel", f"{cfg.get('panel', fmt(None))}: {', '.join(n_genes)} genes; "
                            f"{len(panels)} distinct panel(s) over the folds ({_panel_note(cfg.get('panel'))})"),
             ("Target", _target(cfg)),
             ("Profile", ", ".join(_job_field(res, "profile")) or cfg.get("profile", fmt(None))),
             ("Device", cfg.get("device", fmt(None))),
             ("Pretrained weights (requested)", cfg.get("pretrained", fmt(None))),
             ("Git commit", ", ".join(commits) or "not recorded (no readable MLflow store)"),
             ("MLflow", f"{cfg.get('tracking_uri', fmt(None))}, experiment {cfg.get('experiment', fmt(None))}"),
             ("Evaluation settings", ", ".join(f"{k} = {v}" for k, v in res.friedman.get("settings", {}).items()))]
    header, rows = method_rows(res)
    blocks = [Definitions(items), Heading("Methods"), Table("methods", header, rows, numeric_from=99, wrap=True)]
    if versions:
        blocks += [Heading("Package versions (MLflow tags of the jobs)"),
                   Definitions([(f"{k}", ", ".join(v)) for k, v in versions.items()])]
    header, rows = split_rows(res)
    blocks.append(Details("Folds: training and test sections", [Table("splits", header, rows, numeric_from=4)]))
    panel = _panel(res)
    if panel:
        blocks.append(Details(f"Gene panel of the first fold ({len(panel)} genes)", [Paragraph(", ".join(panel))]))
    return Section("provenance", "Provenance", "Provenance", blocks,
                   "Package versions and the git commit are the tags the runner put on each job's MLflow run; "
                   "MLflow job run ids are in the per-fold section.")


def _target(cfg: dict) -> str:
    target = cfg.get("target", "per-spot")  # runs made before --target existed used per-spot
    return f"{target}: {TARGET_DESCRIPTIONS.get(target, '?')}"


def _panel_note(panel) -> str:
    """How the panel was chosen: on the training sections of each fold, or (published) on every section."""
    if panel == "published":
        return "the published panel, chosen on all sections, TEST SECTIONS INCLUDED (as in the papers)"
    return "chosen on training sections"


def _panel(res: RunResults) -> list[str]:
    for rec in res.jobs.values():
        path = rec["folder"] / "panel.txt"
        if path.is_file():
            return [g for g in path.read_text().splitlines() if g]
    return []


def footer_text() -> str:
    from bench.run.provenance import git_commit, package_versions

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Generated {now} by stbench {package_versions().get('stbench', '?')} (commit {git_commit()}) from the "
            f"saved results only.")

