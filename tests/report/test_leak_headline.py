"""A split that keeps a test patient's other sections in training (loso with patients of several sections)
is said where the scores are read first: the terminal's summary, the report's first card and its verdict."""
from __future__ import annotations

import numpy as np
from synthetic_job_folders import write_job

from bench.evaluation.evaluate import evaluate_jobs
from bench.records import JobKey, Setting
from bench.report.build import verdict_section
from bench.report.data import RunResults
from bench.report.terminal import compact_summary

PATIENT_OF = {"A1": "A", "A2": "A", "B1": "B", "C1": "C"}


def leak_job(out, protocol, fold, sid, leaks, rng):
    truth = rng.normal(0, 1, (40, 12))
    pred = 0.5 * truth + rng.normal(0, 1, truth.shape)
    return write_job(out, JobKey("toy", Setting(protocol, "hvg:10"), fold, "m", 0), truth, pred, [sid] * len(truth),
                     {sid: PATIENT_OF[sid]}, result={"split_leaks_patients": leaks})


def headline(tmp_path, protocol, leaks):
    rng = np.random.default_rng(0)
    folders = [leak_job(tmp_path, protocol, fold, sid, leaks, rng) for fold, sid in enumerate(PATIENT_OF)]
    evaluation = evaluate_jobs(folders, n_boot=50)
    res = RunResults(tmp_path, {"protocol": protocol}, evaluation.per_method, evaluation.per_job,
                     evaluation.per_gene, evaluation.pairwise, evaluation.friedman, evaluation.clustering,
                     evaluation.per_patient, evaluation.patient_pairwise)
    section = verdict_section(res)
    cards = next(b for b in section.blocks if b.kind == "cards").items
    verdict = next(b for b in section.blocks if b.kind == "verdict").lines
    return evaluation.summary, compact_summary(evaluation.summary), cards, verdict


def test_loso_leak_is_in_the_terminal_the_first_card_and_the_verdict(tmp_path):
    summary, terminal, cards, verdict = headline(tmp_path, "loso", leaks=True)
    assert summary.loc[0, "leaks_patients"] and summary.loc[0, "leaking_patients"] == "A"
    sentence = ("Leaks patients: under loso, a test section's patient has other sections in training (1 patient "
                "with several sections: A), so these scores are optimistic")
    assert sentence in terminal
    assert cards[0] == ("leaks patients", "yes (loso)")
    assert verdict[0].startswith(sentence)


def test_a_split_that_does_not_leak_says_nothing(tmp_path):
    summary, terminal, cards, verdict = headline(tmp_path, "lopo", leaks=False)
    assert not summary.loc[0, "leaks_patients"]
    assert "Leaks" not in terminal and all(label != "leaks patients" for label, _ in cards)
    assert not any(line.startswith("Leaks") for line in verdict)
