"""The published-vs-honest comparison: one table per score, methods by evaluation setting.

A *setting* is what decides what a score means beyond the method: dataset, protocol (the split), gene
panel and target. ``bench reproduce`` runs four of them (``reproduce_settings``), from the published one
to the leakage-free one, one change at a time, so each column step measures one effect:

  (a) published split, published panel, per-gene target   -- the papers' setting
  (b) lopo,            published panel, per-gene target   -- (a) -> (b): the split's leakage
  (c) lopo,            published panel, per-spot target   -- (b) -> (c): sequencing depth in the target
  (d) lopo,            hvg:785 on training sections, per-spot -- (c) -> (d): the panel chosen on test sections

Pure: reads job folders' ``result.json`` and ``config.json`` and a published-results table; writes nothing.
A score here is the mean over a setting's jobs (folds x seeds) of the job's ACG or HEG Pearson r, as in the
run's summary table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.preprocess import DEFAULT_TARGET
from bench.errors import InputError

# (column, result.json key, title); job folders written before the metric registry used mean_pcc / heg_pcc.
SCORES = (("acg", "acg_pearson", "ACG"), ("heg", "heg_pearson", "HEG"))
CONTROLS = ("depth-oracle", "mean", "spatial-oracle")  # run in every setting of `bench reproduce`
PUBLISHED_COLUMN = "published"


@dataclass(frozen=True)
class Setting:
    protocol: str
    panel: str
    target: str

    def describe(self) -> str:
        return f"{self.protocol} split, panel {self.panel}, {self.target} target"


def reproduce_settings(n_published_genes: int = 785) -> dict[str, Setting]:
    """The four settings of ``bench reproduce``; (d) chooses as many highly variable genes as the published
    panel has (785 for her2st), on the training sections of each fold."""
    return {
        "a": Setting("published", "published", "per-gene"),
        "b": Setting("lopo", "published", "per-gene"),
        "c": Setting("lopo", "published", "per-spot"),
        "d": Setting("lopo", f"hvg:{n_published_genes}", "per-spot"),
    }


REPRODUCE_EFFECTS = {
    "b": "the split (published leave-one-section-out leaks the test patient's other sections)",
    "c": "the target (per-gene keeps each spot's sequencing depth)",
    "d": "the panel (the published one was chosen on test sections too)",
}


def job_scores(folders: list[Path]) -> pd.DataFrame:
    """One row per complete job folder: dataset, setting fields, method, kind, seed, fold, acg, heg."""
    rows = []
    for folder in folders:
        result = json.loads((Path(folder) / "result.json").read_text())
        config = json.loads((Path(folder) / "config.json").read_text())
        bench = config["benchmark"]
        facts = result.get("facts", {})
        scores = result.get("scores", {})
        rows.append({"dataset": bench["dataset"], "protocol": bench["protocol"], "panel": bench["panel"],
                     "target": bench.get("target", DEFAULT_TARGET),  # runs made before --target: per-spot
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
    return pd.DataFrame(rows, columns=["dataset", "protocol", "panel", "target", "method", "kind", "seed", "fold",
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
    seen = dict.fromkeys(Setting(r.protocol, r.panel, r.target) for r in scores.itertuples())
    return list(seen)


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
            rows = scores[(scores["protocol"] == setting.protocol) & (scores["panel"] == setting.panel)
                          & (scores["target"] == setting.target)]
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
        hit = rows[[Setting(r.protocol, r.panel, r.target) == setting for r in rows.itertuples()]]
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
    rows = scores[(scores["dataset"] == dataset) & (scores["protocol"] == setting.protocol)
                  & (scores["panel"] == setting.panel) & (scores["target"] == setting.target)
                  & scores["method"].isin(list(pub))]
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
    """Column labels for the settings of a plain run folder: ``protocol / panel / target``."""
    return {f"{s.protocol} / {s.panel} / {s.target}": s for s in settings}


def to_markdown(table: pd.DataFrame, title: str) -> str:
    """A plain-text table (GitHub markdown) with 4 decimals; '-' where a method was not run."""
    cols = [c for c in table.columns if c != "kind"]
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        cells = []
        for c in cols:
            v = row[table.columns.get_loc(c)]
            cells.append(v if isinstance(v, str) else ("-" if not np.isfinite(v) else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
