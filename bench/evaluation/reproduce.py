"""The published-vs-honest comparison: one table per score, methods by evaluation setting.

A *setting* (``bench.records.Setting``) is what decides what a score means beyond the method and the data:
protocol (the split), gene panel, target and validation source. ``bench reproduce`` runs four of them (``reproduce_settings``), from the published one
to the leakage-free one, one change at a time, so each column step measures one effect:

  (a) published split, published panel, per-gene target   -- the papers' setting
  (b) lopo,            published panel, per-gene target   -- (a) -> (b): the split's leakage
  (c) lopo,            published panel, per-spot target   -- (b) -> (c): sequencing depth in the target
  (d) lopo,            hvg:785 on training sections, per-spot -- (c) -> (d): the panel chosen on test sections

and, for the methods whose published training chose its epoch or checkpoint on the test data
(``TEST_FOLD_SELECTION``), their own published setting twice:

  (t) that setting, the epoch chosen on the test fold (the harness passes it as the validation set; leaks)
  (u) that setting, the epoch chosen on whole training patients        -- (t) -> (u): choosing on the test fold

Audit of the trainers (each method file says what its original did): HisToGene, THItoGene and mclSTExp train a
fixed number of epochs and keep the last; Hist2ST validates on the test fold every 2 epochs but only logs it (no
early stopping, no checkpoint choice: the last epoch is saved); BLEEP keeps the epoch of lowest loss on 20% of
its training spots (not the test data); TRIPLEX stops early and keeps the checkpoint of best test-fold Pearson.

Pure: reads job folders' ``result.json`` and ``config.json`` and a published-results table; writes nothing.
A score here is the mean over a setting's jobs (folds x seeds) of the job's ACG or HEG Pearson r, as in the
run's summary table.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import InputError
from bench.evaluation import REPRODUCE_SETTINGS
from bench.evaluation.cells import UNKNOWN, is_number, score_cell
from bench.evaluation.evaluate import folder_headline_scores
from bench.records import Setting

# (column, result.json key, title); job folders written before the metric registry used mean_pcc / heg_pcc.
SCORES = (("acg", "acg_pearson", "ACG"), ("heg", "heg_pearson", "HEG"))
CONTROLS = ("depth-oracle", "mean", "spatial-oracle")  # run in every setting of `bench reproduce`
PUBLISHED_COLUMN = "published"


# Methods whose published training chose its epoch or checkpoint on the test fold, with their published setting
# (protocol, panel, target). TRIPLEX (config/ST/andersson): 8 folds by patient = her2st's 8 patients (lopo), the
# 250 genes of highest mean, CPM-normalised and smoothed targets. Found by reading every trainer (module docstring).
TEST_FOLD_SELECTION = {"triplex": ("lopo", "top-mean:250", "per-spot-smoothed")}


def reproduce_settings(n_published_genes: int = 785) -> dict[str, Setting]:
    """The settings of ``bench reproduce``; (d) chooses as many highly variable genes as the published panel has
    (785 for her2st), on the training sections of each fold; (t) and (u) are TRIPLEX's published setting with the
    epoch chosen on the test fold, then on training patients (run only for ``TEST_FOLD_SELECTION`` methods)."""
    protocol, panel, target = TEST_FOLD_SELECTION["triplex"]
    return dict(zip(REPRODUCE_SETTINGS, (
        Setting("published", "published", "per-gene"),
        Setting("lopo", "published", "per-gene"),
        Setting("lopo", "published", "per-spot"),
        Setting("lopo", f"hvg:{n_published_genes}", "per-spot"),
        Setting(protocol, panel, target, "test-fold"),
        Setting(protocol, panel, target, "training-patients"),
    ), strict=True))


# Consecutive settings whose difference is one effect: (from, to).
REPRODUCE_STEPS = (("a", "b"), ("b", "c"), ("c", "d"), ("t", "u"))


def setting_methods(label: str, methods: list[str]) -> list[str]:
    """The methods of ``methods`` that run in a setting: every one in (a)-(d); in (t) and (u) only those whose
    published run chose its epoch on the test fold (the others never choose an epoch, so the step measures
    nothing for them)."""
    if label in ("t", "u"):
        return [m for m in methods if m in TEST_FOLD_SELECTION]
    return list(methods)


REPRODUCE_EFFECTS = {
    "b": "the split (published leave-one-section-out leaks the test patient's other sections)",
    "c": "the target (per-gene keeps each spot's sequencing depth)",
    "d": "the panel (the published one was chosen on test sections too)",
    "u": "choosing the epoch on the test fold (early stopping and the kept checkpoint watched the test Pearson)",
}
# The figure's axis: what a setting that starts a chain of steps is (no step leads to it) ...
START_CAPTIONS = {
    "a": "the papers' setting,\nrun here",
    "t": "TRIPLEX's setting,\nepoch chosen on\nthe test fold (leaks)",
}
# ... and what the step to each other setting removes, short enough for a tick.
STEP_REMOVES = {
    "b": "split leakage",
    "c": "depth from the target",
    "d": "the panel chosen on test",
    "u": "choosing the epoch on test",
}
TICK_WIDTH = 17  # characters per line of a tick's caption


def setting_column(label: str, setting: Setting) -> str:
    """A setting's column in the comparison tables and the figure: ``(<label>)``, with ``, leaks`` where the
    epoch was chosen on the test fold."""
    return f"({label})" + (", leaks" if setting.leaks_test else "")


def steps_between(labels: list[str]) -> list[tuple[str, str, list[str]]]:
    """(previous, label, steps) for each setting label drawn right after one it follows along a chain of
    ``REPRODUCE_STEPS`` (in ``labels``' order): ``steps`` are the labels of every step from ``previous`` to
    ``label``, in order. With ``a,d`` that is ``[("a", "d", ["b", "c", "d"])]``: the drop from (a) to (d) holds
    the split, the target and the panel, not only the panel. A label first in its chain, or drawn after one it
    does not follow, has no entry."""
    before = {b: a for a, b in REPRODUCE_STEPS}
    out = []
    for previous, label in zip(labels, labels[1:]):
        steps, at = [], label
        while at in before and at != previous:
            steps.insert(0, at)
            at = before[at]
        if steps and at == previous:
            out.append((previous, label, steps))
    return out


def _and(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def step_captions(settings: dict[str, Setting]) -> dict[str, str]:
    """Setting column (``setting_column``) -> its caption on the figure's axis: what changed since the previous
    column drawn. That step composes the effects of every step between the two (``steps_between``: with only (a)
    and (d) run, (d) removes the split's leakage, the depth and the panel); a setting that starts a chain says
    what it is; one with nothing of its chain drawn right before it, or one no step leads to, is described."""
    steps = {label: between for _, label, between in steps_between(list(settings))}
    out = {}
    for label, setting in settings.items():
        if label in steps:
            text = "removes " + _and([STEP_REMOVES[s] for s in steps[label]])
        else:
            text = START_CAPTIONS.get(label) or setting.describe()
        # Captions with their own line breaks keep them; the rest wrap (a hyphen is no place to break "per-gene").
        out[setting_column(label, setting)] = text if "\n" in text else textwrap.fill(
            text, TICK_WIDTH, break_on_hyphens=False)
    return out


def step_notes(labels: list[str]) -> list[str]:
    """The page's sentence per drawn step: what the effects between two columns drawn side by side take away."""
    return [f"({previous}) -> ({label}): what {_and([REPRODUCE_EFFECTS[s] for s in steps])} "
            f"take{'s' if len(steps) == 1 else ''} away." for previous, label, steps in steps_between(labels)]


def job_scores(folders: list[Path]) -> pd.DataFrame:
    """One row per complete job folder: dataset, its setting's name and fields, method, kind, seed, fold, acg,
    heg (the job's headline scores: saved in result.json by older jobs, computed from the folder otherwise)."""
    rows = []
    for folder in folders:
        result = json.loads((Path(folder) / "result.json").read_text())
        config = json.loads((Path(folder) / "config.json").read_text())
        bench = config["benchmark"]
        setting = Setting.from_record(bench)
        facts = result.get("facts", {})
        scores = result.get("scores") or folder_headline_scores(folder)
        rows.append({"dataset": bench["dataset"], "setting": setting.name, "protocol": setting.protocol,
                     "panel": setting.panel, "target": setting.target, "validation": setting.validation,
                     "validation_leaks_test": bool(result.get("validation_leaks_test")),
                     "method": result["job"]["method"], "kind": result.get("kind", "method"),
                     "seed": result["job"]["seed"], "fold": result["job"]["fold"],
                     "acg": _num(scores.get("acg_pearson", scores.get("mean_pcc"))),
                     "heg": _num(scores.get("heg_pearson", scores.get("heg_pcc"))),
                     # How the job was run, beyond its setting: what a published number also depends on.
                     "profile": result.get("profile"),
                     # A method meant to start from ImageNet weights that ran without them (methods trained
                     # from scratch as published, e.g. HisToGene, record no ImageNet encoder).
                     "imagenet_weights_missing": bool(facts.get("imagenet_encoder"))
                     and facts.get("pretrained") is False,
                     "image_encoder": (config.get("method_params") or {}).get("image_encoder"),
                     "max_train_spots": result.get("max_train_spots"),
                     "train_spots_capped": _capped(result)})
    return pd.DataFrame(rows, columns=["dataset", "setting", "protocol", "panel", "target", "validation",
                                       "validation_leaks_test", "method", "kind", "seed", "fold",
                                       "acg", "heg", "profile", "imagenet_weights_missing", "image_encoder",
                                       "max_train_spots", "train_spots_capped"])


def _capped(result: dict) -> bool:
    """Whether the job trained on fewer spots than its fold had (``--max-train-spots`` bit)."""
    used, available = result.get("n_train_spots"), result.get("n_train_spots_available")
    return result.get("max_train_spots") is not None and used is not None and available is not None \
        and used < available


def _num(value) -> float:
    return float(value) if value is not None else float("nan")


def settings_in(scores: pd.DataFrame) -> list[Setting]:
    """The distinct settings of these job scores, in order of first appearance."""
    return list(dict.fromkeys(_settings(scores)))


def in_setting(scores: pd.DataFrame, setting: Setting) -> np.ndarray:
    """Which rows of these job scores were made in ``setting`` (compared as one value, every field)."""
    return np.array([s == setting for s in _settings(scores)], dtype=bool)


def _settings(scores: pd.DataFrame) -> list[Setting]:
    return [Setting(r.protocol, r.panel, r.target, r.validation) for r in scores.itertuples()]


def read_published(path: Path) -> pd.DataFrame:
    """The published-results table (``#`` lines are comments); one clear error naming a missing column."""
    table = pd.read_csv(path, comment="#")
    needed = ["dataset", "method", "protocol", "target", "panel", "acg", "heg", "source"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; expected {', '.join(needed)}")
    return table


def comparison_tables(scores: pd.DataFrame, columns: dict[str, Setting], dataset: str,
                      published: pd.DataFrame | None = None, method_order: list[str] | None = None
                      ) -> dict[str, pd.DataFrame]:
    """Per score ("acg", "heg"), a table: one row per method (methods first, then the controls), columns
    ``published`` (only when one of ``columns`` is the published rows' setting: a published number never
    stands beside a run made another way; the first such column is the one it belongs to) and one per
    setting label of ``columns``, each the mean score over that setting's jobs (NaN where the method was not
    run in it)."""
    scores = scores[scores["dataset"] == dataset]
    kinds = dict(zip(scores["method"], scores["kind"]))
    order = [m for m in (method_order or []) if m in kinds] + sorted(set(kinds) - set(method_order or []))
    methods = [m for m in order if kinds[m] == "method"] + [m for m in order if kinds[m] != "method"]
    pub = _matching_published(published, columns, dataset)
    out = {}
    for column, _, _ in SCORES:
        table = pd.DataFrame(index=pd.Index(methods, name="method"))
        table["kind"] = [kinds[m] for m in methods]
        if pub is not None:
            table[PUBLISHED_COLUMN] = [pub.get(m, {}).get(column, np.nan) for m in methods]
        for label, setting in columns.items():
            rows = scores[in_setting(scores, setting)]
            means = rows.groupby("method")[column].mean()
            table[label] = [float(means.get(m, np.nan)) for m in methods]
        out[column] = table.reset_index()
    return out


def _matching_published(published: pd.DataFrame | None, columns: dict[str, Setting], dataset: str):
    """method -> {"acg", "heg", "source", "column"} of the published rows made in the setting of the first
    column that has any (the published column stands beside that one); None when no column has any."""
    if published is None or published.empty:
        return None
    rows = published[published["dataset"] == dataset]
    for label, setting in columns.items():
        # A published row names no validation: it stands beside its setting as the paper ran it.
        hit = rows[[(r.protocol, r.panel, r.target) == (setting.protocol, setting.panel, setting.target)
                    for r in rows.itertuples()]]
        if len(hit):
            return {r.method: {"acg": float(r.acg), "heg": float(r.heg), "source": r.source, "column": label}
                    for r in hit.itertuples()}
    return None


def published_sources(published: pd.DataFrame | None, columns: dict[str, Setting], dataset: str) -> list[str]:
    """'<source> (setting of column <label>)' for each source of the published column."""
    pub = _matching_published(published, columns, dataset) or {}
    return list(dict.fromkeys(f"{v['source']} (made in the setting of column {v['column']})" for v in pub.values()))


def published_run_differences(scores: pd.DataFrame, published: pd.DataFrame | None, columns: dict[str, Setting],
                               dataset: str, n_published_folds: int | None = None) -> list[str]:
    """How the jobs beside the published numbers were not run the way the published numbers were: a note
    per difference (a profile other than ``paper``, ImageNet weights missing where the method uses them, a
    frozen ``--encoder`` in place of the published one, a cap that removed training spots, fewer folds than the
    published ``n_published_folds``), naming the methods it applies to. Empty when there is no published
    column, or when its runs match on all of these (only then is the comparison like for like)."""
    pub = _matching_published(published, columns, dataset)
    if not pub:
        return []
    label = next(iter(pub.values()))["column"]
    setting = columns[label]
    rows = scores[(scores["dataset"] == dataset) & in_setting(scores, setting) & scores["method"].isin(list(pub))]
    if rows.empty:
        return []

    def who(mask) -> str:
        return ", ".join(sorted(set(rows.loc[mask, "method"])))

    differences = []
    not_paper = rows["profile"].ne("paper")
    if not_paper.any():
        profiles = ", ".join(sorted(set(rows.loc[not_paper, "profile"].dropna())))
        ran = f"ran the {profiles} profile" if profiles else "recorded no profile (a run made before profiles)"
        differences.append(f"{who(not_paper)} {ran}, not the published hyper-parameters")
    no_weights = rows["imagenet_weights_missing"].eq(True)
    if no_weights.any():
        differences.append(f"{who(no_weights)} started from random initialisation (the published runs used "
                           f"ImageNet weights)")
    other_encoder = rows["image_encoder"].notna()
    if other_encoder.any():
        encoders = ", ".join(sorted(set(rows.loc[other_encoder, "image_encoder"].astype(str))))
        differences.append(f"{who(other_encoder)} used a frozen {encoders} encoder instead of the published one")
    capped = rows["train_spots_capped"].eq(True)
    if capped.any():
        caps = ", ".join(str(int(c)) for c in sorted(set(rows.loc[capped, "max_train_spots"])))
        differences.append(f"{who(capped)} trained on at most {caps} spots per fold (the published runs used "
                           f"every training spot)")
    if n_published_folds:
        folds = rows.groupby("method")["fold"].nunique()
        short = folds[folds < n_published_folds]
        if len(short):
            counts = ", ".join(f"{m} {n}" for m, n in short.items())
            differences.append(f"the means cover fewer folds than the published {n_published_folds} "
                               f"({counts}; a fold needs its test section's image)")
    if not differences:
        return []
    return [f"Column {label} is not the published experiment, so its numbers are not a reproduction of the "
            f"published ones: " + "; ".join(differences) + "."]


def setting_labels(settings: list[Setting]) -> dict[str, Setting]:
    """Column labels for the settings of a plain run folder: ``protocol / panel / target`` (and ``/ epoch on test
    fold`` where the validation was the test fold)."""
    return {f"{s.protocol} / {s.panel} / {s.target}" + (" / epoch on test fold" if s.leaks_test else ""): s
            for s in settings}


def fold_counts(scores: pd.DataFrame, columns: dict[str, Setting], dataset: str) -> pd.DataFrame:
    """One row per method: ``method`` and, per column label, how many folds it has complete jobs in (0: the
    method was not run in that setting). What tells "not run" from "ran, but r is undefined" in a cell."""
    scores = scores[scores["dataset"] == dataset]
    methods = list(dict.fromkeys(scores["method"]))
    out = pd.DataFrame({"method": methods})
    for label, setting in columns.items():
        rows = scores[in_setting(scores, setting)]
        n = rows.groupby("method")["fold"].nunique()
        out[label] = [int(n.get(m, 0)) for m in methods]
    return out


def published_fold_counts(columns: dict[str, Setting], n_published_folds: int | None) -> dict[str, int]:
    """Column label -> the published protocol's fold count, for the published column and every column run in
    the published split: its header then reads "6 of 32 folds" (a copy of the data with fewer images has
    fewer). Empty when the published fold count is unknown."""
    if not n_published_folds:
        return {}
    return {PUBLISHED_COLUMN: int(n_published_folds),
            **{label: int(n_published_folds) for label, s in columns.items() if s.protocol == "published"}}


def column_fold_counts(table: pd.DataFrame, folds: pd.DataFrame | None = None,
                       of: dict[str, int] | None = None) -> dict[str, str]:
    """Score column -> how many folds it averages, as its header says it: "6 of 32 folds" for a column in the
    published split (``of``), "2 folds" for another, "32 folds" for the published number; a column's count is
    the most folds any method ran in it. Columns without a count (no ``folds``) are left out."""
    of = of or {}
    out = {}
    for c in (c for c in table.columns if c not in ("method", "kind")):
        if c == PUBLISHED_COLUMN:
            if c in of:
                out[c] = f"{of[c]} folds"
            continue
        if folds is None or c not in folds.columns or not len(folds):
            continue
        n = int(folds[c].max())
        out[c] = f"{n} of {of[c]} folds" if c in of else f"{n} fold{'s' * (n != 1)}"
    return out


def comparison_cells(table: pd.DataFrame, folds: pd.DataFrame | None = None, of: dict[str, int] | None = None,
                     digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """The score columns of one comparison table as text, in the words of ``bench.evaluation.cells``:
    headers (each with its fold count: "(a) 6 of 32 folds", "(b) 2 folds") and one row of cells per method.

    ``folds``: ``fold_counts`` (without it a missing score cannot be explained and reads "n/a");
    ``of``: ``published_fold_counts``. A method that ran fewer folds than its column says so in its cell."""
    cols = [c for c in table.columns if c not in ("method", "kind")]
    ran = folds.set_index("method") if folds is not None else None
    column_folds = {c: int(ran[c].max()) for c in cols if ran is not None and c in ran.columns and len(ran)}
    counts = column_fold_counts(table, folds, of)
    headers = [f"{c}{' ' if c.startswith('(') else ', '}{counts[c]}" if c in counts else c for c in cols]
    rows = []
    for r in table.to_dict("records"):
        cells = []
        for c in cols:
            if c == PUBLISHED_COLUMN:
                cells.append(score_cell(r[c], published=True, digits=digits))
                continue
            # No fold counts (a folder compared before they were kept): a missing number cannot be explained.
            n = None if ran is None or c not in ran.columns else int(ran[c].get(r["method"], 0))
            cell = score_cell(r[c], ran=bool(n), digits=digits) if n is not None else (
                score_cell(r[c], digits=digits) if is_number(r[c]) else UNKNOWN)
            if n and n < column_folds.get(c, n):
                cell += f" ({n} of {column_folds[c]} folds)"
            cells.append(cell)
        rows.append(cells)
    return headers, rows


def to_markdown(table: pd.DataFrame, title: str, folds: pd.DataFrame | None = None,
                of: dict[str, int] | None = None) -> str:
    """A plain-text table (GitHub markdown) with 4 decimals; every other cell says why it has no number."""
    headers, rows = comparison_cells(table, folds, of, digits=4)
    cols = ["method", *headers]
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, cells in zip(table["method"], rows):
        lines.append("| " + " | ".join([str(method), *cells]) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(tables: dict[str, pd.DataFrame], folds: pd.DataFrame | None = None,
                        of: dict[str, int] | None = None) -> str:
    """Both scores' tables as text (the terminal's and the ``.md`` file's)."""
    return "".join(to_markdown(tables[key], f"{title} (mean Pearson r over folds)", folds, of) + "\n"
                   for key, _, title in SCORES)
