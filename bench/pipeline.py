"""The benchmark pipeline: run -> evaluate -> log -> report, for ``bench run`` and ``bench reproduce``.

Each stage is its own package (bench.run, bench.evaluation, bench.report); this module is the only place
they meet. ``benchmark`` is one run folder: its jobs, then every table under ``results/``, the MLflow
scores and the report. ``reproduce`` is several such run folders, one per evaluation setting, compared in
one table by the same step (``compare``) that compares the settings a single run folder has built up.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench.method import ENCODER_PARAMS  # the hyper-parameters that name a method's image encoder

if TYPE_CHECKING:  # pandas is imported where it is used: `bench --help` stays fast
    import pandas as pd

log = logging.getLogger("bench")


@dataclass
class BenchResult:
    """What ``bench run`` shows when it ends: the jobs, the summary, the time and what was written."""

    out: Path
    config: object  # the resolved BenchConfig
    completed: list[str]
    skipped: list[str]
    failed: dict[str, str]
    failure_logs: dict[str, str] = field(default_factory=dict)  # job key -> path of its log
    summary: pd.DataFrame | None = None  # one line per method (results/summary.csv)
    timing: dict = field(default_factory=dict)  # wall time of the run split into methods and harness
    settings_text: str | None = None  # the comparison of settings, when the run folder holds more than one
    # Every job was complete and results/ and the report were made from exactly these job folders: nothing
    # was run, logged, evaluated or reported again (``MADE_FROM``).
    up_to_date: bool = False
    report: Path | None = None  # the report written (or found up to date), if any

    @property
    def ok(self) -> bool:
        return not self.failed


class ReportNotDrawnError(RuntimeError):
    """The report code failed after the results were written and logged (a bug: exit 1, results kept)."""


# Written by ``record_made_from`` when a run has evaluated, logged and reported its job folders.
MADE_FROM = "made_from.json"


def benchmark(config) -> BenchResult:
    """``bench run`` on a resolved configuration (``BenchConfig.resolved``): run the jobs, evaluate the run
    folder's job folders of this setting, log the scores, write the report; or, when nothing changed since
    the last time (``up_to_date``), show the results as they are.

    A report that cannot be drawn raises ``ReportNotDrawnError`` (exit 1) once everything else is written
    and logged, naming the command that retries it."""
    import time

    import pandas as pd

    from bench.evaluation.evaluate import RESULTS_DIR, SUMMARY_COLUMNS, evaluate_run
    from bench.records import Setting, setting_folders
    from bench.run.runner import run_benchmark
    from bench.run.tracking import log_evaluation_to_store, log_run_summary

    started = time.perf_counter()
    out = Path(config.out)
    done = up_to_date(config)
    if done is not None:  # nothing new since results/ and the report were made: show them as they are
        log.info("every job is complete and %s and the report were made from them: nothing to do", out / RESULTS_DIR)
        return BenchResult(out, config, [], done, {}, summary=pd.read_csv(out / RESULTS_DIR / "summary.csv"),
                           up_to_date=True, report=out / "report.html")
    record = run_benchmark(config)
    result = BenchResult(out, config, record.completed, record.skipped, record.failed, record.failure_logs)
    # Every table under results/ comes from the job folders of this setting, exactly as `bench evaluate` makes
    # them: those of this run and of any earlier run of the same setting into the same folder, so running
    # methods one at a time into one folder builds up one comparison instead of replacing it.
    folders = setting_folders(out, config.dataset, Setting.of(config))
    if folders:
        evaluation = evaluate_run(out, folders)
        log_evaluation_to_store(evaluation, out, config.tracking_uri)
        result.summary = evaluation.summary
    else:  # nothing completed: leave any earlier results and report as they are
        log.warning("no complete job to evaluate; %s left as it was", out / RESULTS_DIR)
        result.summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    log_run_summary(config.tracking_uri, record.parent_runs, result.summary)
    not_drawn = None
    if folders:  # before the report, which opens with the comparison when the folder holds several settings
        result.settings_text = compare_settings(out, config.dataset)
        from bench.report.build import write_report

        try:  # the report only reads the results written above: failing to draw it never loses them
            result.report = write_report(out)
        except Exception as exc:  # noqa: BLE001 - any failure here is the report's bug, raised below
            not_drawn = exc
    if result.report is not None and result.ok:
        record_made_from(out, config, folders)
    result.timing = record_timing(out, time.perf_counter() - started, record.results,
                                  config.jobs if config.executor == "local" else None)
    log_run_summary(config.tracking_uri, record.parent_runs, timing=result.timing)
    if not_drawn is not None:
        raise ReportNotDrawnError(
            f"the report could not be drawn ({type(not_drawn).__name__}: {not_drawn}); the results are kept in "
            f"{out / RESULTS_DIR}; retry with `python -m bench report {out}`") from not_drawn
    return result


def record_timing(out: Path, wall_seconds: float, job_results: list[dict], parallel: int | None) -> dict:
    """The run's wall time split into the methods' time and the suite's (``run_timing.json``); measured
    last, so the evaluation and the report count as the suite's."""
    from bench.run.runner import run_time_split

    timing = run_time_split(wall_seconds, job_results, parallel=parallel)
    try:
        (out / "run_timing.json").write_text(json.dumps(timing, indent=1))
    except OSError as exc:  # the results are written; only this summary is lost
        log.warning("could not write %s: %s", out / "run_timing.json", exc)
    return timing


def up_to_date(config) -> list[str] | None:
    """The keys of this run's jobs when there is nothing to do: every job is complete
    (``bench.run.runner.complete_job_keys``) and results/ and the report were made from exactly the job
    folders of this setting there are now (``record_made_from``). None otherwise."""
    from bench.records import Setting, setting_folders
    from bench.run.runner import complete_job_keys

    out = Path(config.out)
    try:
        recorded = json.loads((out / "results" / MADE_FROM).read_text())
    except (OSError, ValueError):
        return None
    keys = complete_job_keys(config)
    if keys is None:
        return None
    try:
        current = _made_from(out, config, setting_folders(out, config.dataset, Setting.of(config)))
    except (OSError, ValueError):
        return None
    return keys if current == recorded and current["report"] and current["summary"] else None


def _made_from(out: Path, config, folders: list[Path]) -> dict:
    """What the run folder's results/ and report.html were made from: each job folder's COMPLETE record
    (which holds the checksum of every file), the suite's version and the MLflow store they were logged to;
    and, to notice a later `bench evaluate` or `bench report`, the size and time of summary.csv and the
    report."""
    import hashlib

    from bench import __version__
    from bench.records import COMPLETE

    def stat(path: Path) -> list[int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    jobs = {folder.relative_to(out).as_posix(): hashlib.sha256((folder / COMPLETE).read_bytes()).hexdigest()
            for folder in folders}
    return {"version": __version__, "tracking_uri": config.tracking_uri, "jobs": jobs,
            "summary": stat(out / "results" / "summary.csv"), "report": stat(out / "report.html")}


def record_made_from(out: Path, config, folders: list[Path]) -> None:
    """Record, once results/ and report.html are written and logged, which job folders they come from: a
    rerun that finds every job complete and this record current does nothing but print the results."""
    try:
        (out / "results" / MADE_FROM).write_text(json.dumps(_made_from(out, config, folders), indent=1))
    except OSError as exc:  # only the shortcut of the next rerun is lost
        log.warning("could not write %s: %s", out / "results" / MADE_FROM, exc)


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
