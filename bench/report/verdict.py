"""The report's verdict, "who wins, by how much, how sure", from the patient-level evidence only.

Pure: results tables in, sentences and headline cards out (the page renders them). The patient is the
unit of replication: a winner is claimed for new patients only when at least ``MIN_PATIENTS`` patients
were tested, the exact sign-flip test of the leader against the runner-up (paired over patients,
Benjamini-Hochberg across pairs) is below alpha, and the interval across patients (hierarchical
bootstrap) of their difference excludes 0. Gene-level tests are reported as what they are, statements
about the test sections at hand, and never decide the verdict.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.report.data import contenders, ranked_methods
from bench.report.formatting import fmt, interval, kind_label

MIN_PATIENTS = 3  # as bench.evaluation.patients.MIN_PATIENTS (the report reads tables, not that module)
SCORE = "ACG r: Pearson r of each gene within each test section, averaged over genes, then over a patient's " \
        "sections, then over patients"


@dataclass
class VerdictText:
    lines: list[str]
    cards: list[tuple[str, str]] = field(default_factory=list)
    claim: bool = False  # a winner is claimed for new patients
    winner: str | None = None
    n_patients: int = 0


def _signed(value) -> str:
    text = fmt(value)
    return f"+{text}" if text[0].isdigit() and float(value) > 0 else text


def oriented_pair(table: pd.DataFrame, a: str, b: str, gene_set: str = "acg", metric: str = "pearson") -> dict | None:
    """The patient-level comparison of a and b with every difference as a - b (the table lists each pair
    once, in either order); None when the table has no such pair."""
    if table is None or table.empty:
        return None
    rows = table[(table["gene_set"] == gene_set) & (table["metric"] == metric)]
    for flipped, (x, y) in ((False, (a, b)), (True, (b, a))):
        hit = rows[(rows["method_a"] == x) & (rows["method_b"] == y)]
        if len(hit):
            row = hit.iloc[0].to_dict()
            diffs = json.loads(row["differences"]) if row.get("differences") else {}
            if flipped:
                diffs = {p: -v for p, v in diffs.items()}
                row["mean_difference"] = -row["mean_difference"]
                row["ci_low"], row["ci_high"] = -row["ci_high"], -row["ci_low"]
                row["n_a_better"], row["n_b_better"] = row["n_b_better"], row["n_a_better"]
            row["differences"] = diffs
            return row
    return None


def _gene_pair(pairwise: pd.DataFrame, a: str, b: str) -> tuple[dict | None, bool]:
    for flipped, (x, y) in ((False, (a, b)), (True, (b, a))):
        hit = pairwise[(pairwise["method_a"] == x) & (pairwise["method_b"] == y)] if len(pairwise) else pairwise
        if len(hit):
            return hit.iloc[0].to_dict(), not flipped
    return None, True


def per_patient_values(per_patient: pd.DataFrame, method: str, column: str = "acg_pearson") -> str:
    rows = per_patient[per_patient["method"] == method] if len(per_patient) else per_patient
    return ", ".join(f"{p} {fmt(v)}" for p, v in zip(rows.get("patient", []), rows.get(column, []))) or fmt(None)


def _patient_interval(row) -> str:
    ci = interval(row.get("patient_acg_pearson_ci_low"), row.get("patient_acg_pearson_ci_high"))
    few = row.get("n_patients", 0) < MIN_PATIENTS
    return f"none (fewer than {MIN_PATIENTS} patients)" if ci == fmt(None) and few else ci


def build_verdict(per_method: pd.DataFrame, per_patient: pd.DataFrame, patient_pairwise: pd.DataFrame,
                  pairwise: pd.DataFrame, friedman: dict, alpha: float = 0.05,
                  unknown_patients: int = 0) -> VerdictText:
    """Sentences, in order: who wins, by how much, how sure (patients), within these sections (genes),
    pooled vs per-section r, ranks within patients, and the controls for scale."""
    cands = contenders(per_method)
    controls = ranked_methods(per_method)
    controls = controls[controls["kind"] != "method"]
    context = [f"{kind_label(r['kind'])} {r['method']}: ACG r = {fmt(r['patient_acg_pearson'])}"
               + (" (undefined: constant predictions)" if not np.isfinite(r["patient_acg_pearson"]) else "")
               for r in controls.to_dict("records")]
    tail = ["Controls for scale: " + "; ".join(context) + "."] if context else []
    if unknown_patients:
        tail.append(f"The patient of {unknown_patients} test section(s) is not recorded (job folders from an "
                    f"older version): each counts as its own patient, which overstates the number of patients.")
    if cands.empty:
        return VerdictText(["No method has a defined ACG Pearson r, so there is no winner."] + tail)
    best = cands.iloc[0]
    n_best = int(best["n_patients"])
    values = per_patient_values(per_patient, best["method"])
    cards = [("patients tested", fmt(n_best, "int")), ("ACG r (mean over patients)", fmt(best["patient_acg_pearson"])),
             ("95% CI across patients", _patient_interval(best).replace("fewer than", "<"))]
    if len(cands) == 1:
        lines = [f"Who wins: {best['method']} is the only method with a defined score besides the controls: mean "
                 f"ACG r {fmt(best['patient_acg_pearson'])} over {n_best} patient(s), 95% CI across patients "
                 f"{_patient_interval(best)}; per patient: {values} ({SCORE})."]
        if n_best < MIN_PATIENTS:
            lines.append(f"No claim about new patients is supported: {n_best} patient(s) were tested, and an "
                         f"interval across patients needs at least {MIN_PATIENTS}.")
        lines.append(_within_sections(best))
        lines.append(_pooled([best]))
        return VerdictText(lines + tail, [("only method", best["method"])] + cards, False, None, n_best)

    second = cands.iloc[1]
    pair = oriented_pair(patient_pairwise, best["method"], second["method"])
    n = int(pair["n_patients"]) if pair else 0
    claim = bool(pair and n >= MIN_PATIENTS and np.isfinite(pair["p_bh"]) and pair["p_bh"] < alpha
                 and np.isfinite(pair["ci_low"]) and pair["ci_low"] > 0)
    if claim:
        lines = [f"Who wins: {best['method']}, on the evidence of {n} patients: mean ACG r "
                 f"{fmt(best['patient_acg_pearson'])}, 95% CI across patients {_patient_interval(best)} ({SCORE})."]
    elif n < MIN_PATIENTS:
        lines = [f"Who wins: no claim about new patients is supported: {n} patient(s) were tested, and an interval "
                 f"across patients needs at least {MIN_PATIENTS} (a paired test over {n} cannot reach p below "
                 f"{fmt(pair['p_min'] if pair else 1.0, 'p')}), whatever the gene-level p. On these patients "
                 f"{best['method']} scores highest: mean ACG r {fmt(best['patient_acg_pearson'])}; per patient: "
                 f"{values} ({SCORE})."]
    else:
        lines = [f"Who wins: no winner can be claimed for new patients. {best['method']} scores highest, mean ACG r "
                 f"{fmt(best['patient_acg_pearson'])} over {n} patients (95% CI across patients "
                 f"{_patient_interval(best)}), but its lead over {second['method']} is not established across "
                 f"patients ({SCORE})."]
    if pair:
        diffs = "; ".join(f"{p} {_signed(v)}" for p, v in pair["differences"].items()) or fmt(None)
        wins = int(pair["n_a_better"])
        ci_d = interval(pair["ci_low"], pair["ci_high"])
        lines.append(f"By how much: ahead of {second['method']} (mean ACG r {fmt(second['patient_acg_pearson'])}) by "
                     f"{fmt(pair['mean_difference'])}; per patient: {diffs}; better on {wins} of {n} patients"
                     f"{' (every one)' if n and wins == n else ''}; 95% CI of the difference across patients "
                     f"{ci_d if ci_d != fmt(None) else f'none (fewer than {MIN_PATIENTS} patients)'}.")
        test = "exact sign-flip permutation test" if "exact" in str(pair.get("test", "")) else \
            f"{pair.get('test', 'sign-flip permutation test')}"
        floor = (f"; with {n} patients no paired test can reach alpha = {alpha:g}" if pair["p_min"] >= alpha else "")
        significant = bool(np.isfinite(pair["p_bh"]) and pair["p_bh"] < alpha)
        lines.append(f"How sure: {test} paired over {n} patients, p = {fmt(pair['p_value'], 'p')} (BH-adjusted "
                     f"across pairs: {fmt(pair['p_bh'], 'p')}); the smallest p attainable with {n} patients is "
                     f"{fmt(pair['p_min'], 'p')}{floor}; {'significant' if significant else 'not significant'} at "
                     f"alpha = {alpha:g}.")
        cards += [(f"ahead of {second['method']} by", fmt(pair["mean_difference"])),
                  ("better on patients", f"{wins} of {n}"), ("sign-flip p (BH) vs runner-up", fmt(pair["p_bh"], "p")),
                  ("smallest attainable p", fmt(pair["p_min"], "p"))]
    gene, as_listed = _gene_pair(pairwise, best["method"], second["method"])
    if gene is not None:
        share = fmt(gene["share_improved"], "pct")
        better = f"{best['method']} is better on {share}" if as_listed else \
            f"{second['method']} is better on only {share}"
        lines.append(_within_sections(best, f"{better} of genes; Wilcoxon signed-rank over genes, BH-adjusted "
                                            f"p = {fmt(gene['p_bh'], 'p')}"))
    lines.append(_pooled([best, second]))
    ranks, cd = friedman.get("average_ranks") or {}, friedman.get("critical_difference")
    if best["method"] in ranks and second["method"] in ranks and cd is not None:
        gap = ranks[second["method"]] - ranks[best["method"]]
        lines.append(f"Ranked within each patient: average ranks {fmt(ranks[best['method']])} vs "
                     f"{fmt(ranks[second['method']])} (Friedman over {fmt(friedman.get('n_blocks'), 'int')} patients, "
                     f"p = {fmt(friedman.get('p_value'), 'p')}); the gap {'exceeds' if gap > cd else 'is within'} the "
                     f"critical difference {fmt(cd)}.")
    head = ("winner on new patients" if claim else "highest on these patients", best["method"])
    return VerdictText(lines + tail, [head] + cards, claim, best["method"] if claim else None, n)


def _within_sections(best, test: str = "") -> str:
    """The gene-level evidence, labelled as what it describes."""
    ci = interval(best["acg_pearson_ci_low"], best["acg_pearson_ci_high"])
    return (f"Within these test sections only (genes as replicates, which describes these sections, not new "
            f"patients): {test + '; ' if test else ''}resampling genes gives a 95% CI of {ci} for the pooled ACG r "
            f"of {best['method']}.")


def _pooled(rows) -> str:
    parts = "; ".join(f"{r['method']} {fmt(r['acg_pearson'])} (per section {fmt(r['patient_acg_pearson'])})"
                      for r in rows)
    return (f"Pooled over each fold's test spots instead, ACG r is {parts}: pooling several sections mixes the "
            f"differences between them into r.")


def random_init_methods(per_method: pd.DataFrame) -> list[str]:
    """Methods whose image encoder started from random initialisation although published results start
    from pretrained weights (``random_init`` of the evaluation; absent from results of older versions)."""
    if "random_init" not in per_method:
        return []
    return [str(m) for m, flag in zip(per_method["method"], per_method["random_init"]) if flag is True or flag == 1]


def random_init_note(per_method: pd.DataFrame, requested: str | None = None) -> str | None:
    """One sentence for the top of the verdict and the end of a run: which methods' encoders were never
    pretrained, why, and what that means for reading their scores. None when every encoder was pretrained.
    ``per_method``: any table with ``method`` and ``random_init`` (``per_method`` or ``summary.csv``);
    ``requested``: the run's --pretrained (auto, yes, no), when known."""
    methods = random_init_methods(per_method)
    if not methods:
        return None
    why = {"no": "the run asked for it with --pretrained no",
           "auto": "ImageNet weights could not be loaded, e.g. offline; --pretrained auto continued without them"}
    reason = why.get(str(requested), "the weights were not used")
    names = ", ".join(methods[:-1]) + f" and {methods[-1]}" if len(methods) > 1 else methods[0]
    return (f"Not pretrained: the image encoder of {names} started from random initialisation ({reason}). "
            f"Published results start from pretrained weights, so these scores are not comparable with them.")


def leak_note(per_method: pd.DataFrame) -> str | None:
    """One sentence for the terminal's summary, the report's first card and its verdict when the split kept
    a test patient's other sections in training (``leaks_patients`` of ``per_method`` or ``summary.csv``):
    the scores then do not measure prediction for new patients. None when no method's split leaked."""
    if "leaks_patients" not in per_method:
        return None
    flags = [flag is True or flag == 1 or str(flag).lower() == "true" for flag in per_method["leaks_patients"]]
    leaked = per_method[flags]
    if leaked.empty:
        return None
    protocols = ", ".join(dict.fromkeys(str(p) for p in leaked.get("protocol", pd.Series(["this"]))))
    names = []
    for value in leaked.get("leaking_patients", pd.Series(dtype=object)):
        if isinstance(value, str):
            names += [n for n in value.split(",") if n and n not in names]
    who = (f" ({len(names)} patient{'s' if len(names) != 1 else ''} with several sections: "
           f"{', '.join(names[:6])}{' ...' if len(names) > 6 else ''})" if names else "")
    return (f"Leaks patients: under {protocols}, a test section's patient has other sections in training{who}, "
            f"so these scores are optimistic and do not measure prediction for new patients; "
            f"--protocol lopo keeps each patient out whole.")
