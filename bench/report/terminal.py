"""What the terminal shows at the end of ``bench run`` and ``bench evaluate``: a compact table, one line per
method within 100 columns (the full table is ``results/summary.csv``, the full story the HTML report)."""
from __future__ import annotations

import json
from pathlib import Path

from bench.evaluation.cells import UNDEFINED_FOOTNOTE, UNDEFINED_MARK, narrow_cell, score_cell
from bench.method import kind_of
from bench.report.verdict import leak_note, random_init_note


def compact_summary(summary, requested_pretrained: str | None = None) -> str:
    """The table, then what the columns mean and, when an image encoder was never pretrained, the sentence
    that says so (as the report's verdict does). ACG and HEG are the headline, patient-level scores (the same
    numbers as summary.csv and the report's first card); rank is the mean rank over every metric."""

    def pretrained(r) -> str:
        if r.get("random_init") is True or str(r.get("random_init")).lower() == "true":
            return "no: random init"
        return "yes" if str(r["pretrained"]).lower() == "true" else "no"

    def score(value) -> str:
        return narrow_cell(score_cell(value))  # every method here ran: NaN is an undefined r

    rows = [("method", "kind", "ACG ± sd", "HEG", "rank", "pretrained", "time (s)")]
    for r in summary.to_dict("records"):
        if "acg_pearson" not in r:  # a summary.csv written before the metric registry (a rerun with nothing new)
            nan = float("nan")
            r.update(acg_pearson=r.get("mean_pcc", nan), acg_pearson_sd=r.get("sd_pcc", nan),
                     heg_pearson=r.get("heg_pcc", nan), mean_rank=nan)
        acg = score(r["acg_pearson"]) + ("" if r["acg_pearson_sd"] != r["acg_pearson_sd"]
                                         else f" ± {r['acg_pearson_sd']:.3f}")
        seconds = r["fit_seconds"] + r["predict_seconds"]
        rank = "" if r["mean_rank"] != r["mean_rank"] else f"{r['mean_rank']:.1f}"
        rows.append((str(r["method"])[:22], kind_of(r["kind"]).short, acg, score(r["heg_pearson"]), rank,
                     pretrained(r), f"{seconds:,.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 6}  # numbers line up on the right
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.append("ACG: Pearson r over all panel genes per test section, averaged within each patient, then over")
    lines.append("patients (± sd across patients); HEG: the 50 most expressed genes. rank: mean rank over every")
    lines.append("metric and gene set (1 = best; methods only). time: fit + predict, summed over the jobs.")
    if any(UNDEFINED_MARK in cell for row in rows for cell in row):
        lines.append(UNDEFINED_FOOTNOTE)
    note = random_init_note(summary, requested_pretrained)
    if note:
        lines += ["", note]
    leak = leak_note(summary)  # the split kept test patients' other sections in training: say it here too
    if leak:
        lines += ["", leak]
    return "\n".join(lines)


def requested_pretrained(run_dir: Path) -> str | None:
    """The run's --pretrained, from its config.json (None when unreadable)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text()).get("pretrained")
    except (OSError, ValueError, AttributeError):
        return None


def run_summary(result) -> tuple[str, list[str]]:
    """What ``bench run`` prints when it ends: the table, the jobs, the time and where everything is (for
    stdout), and one line per failed job (for stderr)."""
    lines = [""]
    if len(result.summary):
        lines += [compact_summary(result.summary, result.config.pretrained), ""]
    lines.append(f"{len(result.completed)} job(s) run, {len(result.skipped)} already complete, "
                 f"{len(result.failed)} failed.")
    if result.up_to_date:
        lines.append("Nothing new: every job was complete, and the results and report were already made from them.")
    t = result.timing
    if t and t.get("harness_share") is not None:
        lines.append(f"Time: {t['wall_seconds']:.1f} s, of which the methods' fit/predict {t['method_seconds']:.1f} s "
                     f"and the suite {t['harness_seconds']:.1f} s ({100 * t['harness_share']:.1f}%; run_timing.json)")
    if result.settings_text:
        lines.append("\nThis run folder holds more than one setting:\n" + result.settings_text)
    lines.append(f"Every column: {result.out / 'results' / 'summary.csv'} (and the other tables in results/)")
    if result.report is not None:
        lines.append(f"Report: {result.report}")
    lines.append(f"Browse the runs: python -m bench ui --out {result.out}")
    failures = [f"FAILED {key}: {why}" + (f" (log: {result.failure_logs[key]})" if key in result.failure_logs else "")
                for key, why in result.failed.items()]
    return "\n".join(lines), failures


def evaluation_summary(evaluation, run_dir: Path) -> str:
    """What ``bench evaluate`` prints: the table, the Friedman test over patients, MLflow and the tables."""
    lines = [compact_summary(evaluation.summary, requested_pretrained(run_dir))]
    friedman = evaluation.friedman
    if friedman.get("p_value") is not None:
        lines.append(f"\nFriedman over {friedman['n_blocks']} patients: p = {friedman['p_value']:.3g}; "
                     f"critical difference of average ranks {friedman['critical_difference']:.3f}")
    logged = evaluation.settings.get("mlflow")
    if logged:
        lines.append(f"MLflow: logged to {logged['jobs']} job run(s) and {logged['methods']} method run(s)")
    lines.append(f"{len(evaluation.per_job)} job(s) evaluated. Tables: {Path(run_dir) / 'results'}")
    return "\n".join(lines)
