"""The benchmark pipeline: run -> evaluate -> log -> report, for ``bench run`` and ``bench reproduce``.

Each stage is its own package (bench.run, bench.evaluation, bench.report); this module is the only place
they meet. ``benchmark`` is one run folder: its jobs, then every table under ``results/``, the MLflow
scores and the report. ``reproduce`` is several such run folders, one per evaluation setting, compared in
one table by the same step (``compare``) that compares the settings a single run folder has built up.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench.method import ENCODER_PARAMS  # the hyper-parameters that name a method's image encoder

if TYPE_CHECKING:  # pandas is imported where it is used: `bench --help` stays fast
    import pandas as pd

log = logging.getLogger("bench")


def benchmark(config):
    """``bench run``: run the jobs, evaluate every comparable job folder, log the scores, write the report.

    Returns the runner's ``BenchResult`` with the summary, the settings comparison and the timing filled in."""
    import pandas as pd

    from bench.evaluation.evaluate import RESULTS_DIR, SUMMARY_COLUMNS, evaluate_run
    from bench.run.runner import (
        comparable_job_folders,
        finish_benchmark,
        record_made_from,
        record_timing,
        run_benchmark,
    )
    from bench.run.tracking import log_evaluation_to_store

    result = run_benchmark(config)
    config, out = result.config, result.out
    if result.up_to_date:  # nothing new since results/ and the report were made: show them as they are
        result.summary = pd.read_csv(out / RESULTS_DIR / "summary.csv")
        return result
    # Every table under results/ comes from the job folders, exactly as `bench evaluate` makes them: those of
    # this run and any earlier run into the same folder with the same dataset, protocol and panel, so running
    # methods one at a time into one folder builds up one comparison instead of replacing it.
    folders = comparable_job_folders(out, config)
    if folders:
        evaluation = evaluate_run(out, folders)
        log_evaluation_to_store(evaluation, out, config.tracking_uri)
        summary = evaluation.summary
    else:  # nothing completed: leave any earlier results and report as they are
        log.warning("no complete job to evaluate; %s left as it was", out / "results")
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    finish_benchmark(result, summary)
    if folders:  # before the report, which opens with the comparison when the folder holds several settings
        result.settings_text = compare_settings(out, config.dataset)
        try:  # the report only reads the results written above: failing to draw it never loses them
            from bench.report.build import write_report

            result.report = write_report(out)
        except Exception as exc:
            log.warning("no report written (%s: %s); the results are in %s; retry with `python -m bench report %s`",
                        type(exc).__name__, exc, out / "results", out)
    if result.report is not None and result.ok:
        record_made_from(out, config, folders)
    record_timing(result)
    return result


def encoder_params(methods: list[str], encoder: str) -> dict[str, dict]:
    """``--encoder NAME`` as per-method parameters: every method with an encoder parameter gets NAME; a method
    without one is left as it is (and the log says so, so nobody believes it ran on that encoder)."""
    from bench.registry import get_method_class

    params, untouched = {}, []
    for name in methods:
        names = get_method_class(name).param_names()
        which = next((p for p in ENCODER_PARAMS if p in names), None)
        if which:
            params[name] = {which: encoder}
        else:
            untouched.append(name)
    if untouched:
        log.info("--encoder %s: %s take(s) no image encoder and run as before", encoder, ", ".join(untouched))
    return params


@dataclass
class Comparison:
    """Settings side by side: one table per score, its text (markdown) and notes; the folds each method ran in
    each setting (0: not run) and, per column, the published protocol's fold count ("6 of 32 folds")."""

    tables: dict
    text: str
    notes: list[str]
    folds: pd.DataFrame | None = None
    of: dict[str, int] = field(default_factory=dict)


def compare(scores, columns: dict, dataset: str, method_order: list[str] | None = None,
            notes_before: tuple[str, ...] = (), notes_after: tuple[str, ...] = (), legend: bool = False) -> Comparison:
    """The comparison step shared by ``bench run`` (a folder holding several settings) and ``bench reproduce``:
    the tables by setting, the published numbers beside the matching setting only, and what differs from
    the published run."""
    from bench.evaluation.reproduce import (
        comparison_markdown,
        comparison_tables,
        fold_counts,
        published_fold_counts,
        published_run_differences,
        published_sources,
        read_published,
    )
    from bench.registry import get_dataset_module

    module = get_dataset_module(dataset)
    path = getattr(module, "PUBLISHED_RESULTS", None)
    published = read_published(path) if path else None
    tables = comparison_tables(scores, columns, dataset, published, method_order=method_order)
    notes = [*notes_before, *(f"Published numbers: {src}." for src in published_sources(published, columns, dataset))]
    notes += published_run_differences(scores, published, columns, dataset, n_published_folds(module))
    notes += notes_after
    folds = fold_counts(scores, columns, dataset)
    of = published_fold_counts(columns, n_published_folds(module))
    text = comparison_markdown(tables, folds, of)
    if legend:
        text += "\n".join(f"- {c}: {s.describe()}" for c, s in columns.items()) + "\n\n"
    text += "".join(f"- {n}\n" for n in notes)
    return Comparison(tables, text, notes, folds, of)


def write_comparison(out: Path, name: str, title: str, comparison: Comparison, columns: dict,
                     steps: dict[str, str] | None = None) -> None:
    """``results/<name>_{acg,heg,folds}.csv``, ``<name>.md`` and the page ``<name>.html`` in ``out``; with ``steps``
    (column -> what changed since the column before it) the page opens with the decomposition figure."""
    from bench.report.reproduce import write_comparison_page

    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    for key, table in comparison.tables.items():
        table.to_csv(out / "results" / f"{name}_{key}.csv", index=False)
    if comparison.folds is not None:
        comparison.folds.to_csv(out / "results" / f"{name}_folds.csv", index=False)
    (out / f"{name}.md").write_text(comparison.text)
    write_comparison_page(out / f"{name}.html", title, comparison.tables,
                          [f"{label}: {s.describe()}" for label, s in columns.items()], comparison.notes,
                          folds=comparison.folds, of=comparison.of, steps=steps)


def compare_settings(out: Path, dataset: str) -> str | None:
    """When the run folder holds complete jobs of more than one setting (protocol, panel, target) of the
    dataset, the comparison tables ``bench reproduce`` makes (``results/settings_{acg,heg}.csv``,
    ``settings.md``, ``settings.html``); returns the text, or None with one setting."""
    from bench.evaluation.reproduce import job_scores, setting_labels, settings_in
    from bench.records import find_job_folders

    scores = job_scores(find_job_folders(out))
    scores = scores[scores["dataset"] == dataset]
    settings = settings_in(scores)
    if len(settings) < 2:
        return None
    columns = setting_labels(settings)
    comparison = compare(scores, columns, dataset)
    write_comparison(out, "settings", f"stbench: {dataset}, {len(settings)} settings", comparison, columns)
    log.info("this run folder holds %d settings of %s: compared in %s", len(settings), dataset,
             Path(out) / "settings.html")
    return comparison.text


def n_published_folds(module) -> int | None:
    """How many folds the dataset's published protocol has on its full cohort (one per published section)."""
    sections = getattr(module, "PUBLISHED_SECTIONS", None)
    return len(sections) if sections else None


def reproduce(base, settings: list[str] | None = None) -> dict:
    """``bench reproduce``: run each of the dataset's reproduce settings (the published one to the
    leakage-free one, bench.evaluation.reproduce.reproduce_settings) as its own ``benchmark`` into
    ``<out>/settings/<label>/`` (resumable, evaluated and reported on its own), with the controls added, then
    compare them: ``<out>/results/reproduce_{acg,heg}.csv``, ``<out>/reproduce.md`` and
    ``<out>/reproduce.html``. Returns the tables, their text and each setting's result."""
    from bench.errors import InputError
    from bench.evaluation.reproduce import (
        CONTROLS,
        job_scores,
        reproduce_settings,
        setting_column,
        setting_methods,
        step_captions,
        step_notes,
    )
    from bench.records import find_job_folders
    from bench.registry import get_dataset_module
    from bench.run.tracking import default_tracking_uri

    module = get_dataset_module(base.dataset)
    if not getattr(module, "PUBLISHED_SECTIONS", None) or not getattr(module, "PUBLISHED_PANEL", None):
        raise InputError(f"dataset {base.dataset!r} declares no published setting (PUBLISHED_SECTIONS and "
                         f"PUBLISHED_PANEL); bench reproduce needs both")
    n_genes = sum(1 for g in Path(module.PUBLISHED_PANEL).read_text().splitlines() if g.strip())
    available = reproduce_settings(n_genes)
    labels = settings or list(available)
    unknown = [s for s in labels if s not in available]
    if unknown:
        raise InputError(f"unknown setting(s) {unknown}; valid: {', '.join(available)}")
    out = Path(base.out)
    methods = list(dict.fromkeys([*base.methods, *CONTROLS]))
    results, folders = {}, []
    for label in labels:
        setting = available[label]
        chosen = setting_methods(label, base.methods)
        if not chosen:  # (t), (u): none of the methods chose its epoch on the test fold
            log.info("setting (%s) skipped: no method of %s chose its epoch on the test fold", label, base.methods)
            continue
        log.info("setting (%s): %s", label, setting.describe())
        config = replace(base, methods=list(dict.fromkeys([*chosen, *CONTROLS])), protocol=setting.protocol,
                         panel=setting.panel, target=setting.target, validation=setting.validation,
                         out=str(out / "settings" / label),
                         # One MLflow store for the whole comparison (`bench ui --out <out>`), an experiment each.
                         tracking_uri=base.tracking_uri or default_tracking_uri(out.resolve()),
                         experiment=f"stbench-{base.dataset}-reproduce-{label}").resolved()
        results[label] = benchmark(config)
        folders += find_job_folders(out / "settings" / label)
    labels = [label for label in labels if (out / "settings" / label).is_dir()]
    columns = {setting_column(label, available[label]): available[label] for label in labels}
    steps = step_notes(labels)
    if "t" in labels:
        steps.append("(t) LEAKS: as TRIPLEX's published run, the harness passed the test fold (with its truth) as "
                     "the validation set that chose the epoch; (u) holds whole training patients out instead.")
    panel_note = ("The published panel was chosen on all sections, test sections included; "
                  if any(columns[c].panel == "published" for c in columns) else "")
    after = [panel_note + "depth-oracle predicts each gene from the test spot's true total count only (how much of "
             "a score depth explains).",
             f"Profile {base.profile}; each setting is a full run folder under {out / 'settings'}."]
    comparison = compare(job_scores(folders), columns, base.dataset, method_order=methods,
                         notes_before=tuple(steps), notes_after=tuple(after), legend=True)
    write_comparison(out, "reproduce", f"stbench reproduce: {base.dataset}", comparison, columns,
                     steps=step_captions({label: available[label] for label in labels}))
    return {"tables": comparison.tables, "text": comparison.text, "results": results}
