"""One registry of the evaluation's metrics: every table, statistic, MLflow key and report column iterates it.

A metric is one ``Metric`` entry: its name, its function, what it scores (``level``), whether higher or
lower is better, and what it needs beside the targets and the prediction. Adding a metric is one entry
(``register``, or an entry point in the group ``stbench.metrics`` for a metric defined in another package).

Levels (every one is computed on the pooled test spots of a job AND within each test section alone):

- ``gene``:    ``fn(truth, pred, **needs) -> (n_genes,)``, one value per gene; a gene set's score is the
               mean over the set's genes where the value is defined.
- ``spot``:    ``fn(truth, pred, **needs) -> (n_spots,)``, one value per spot over the genes it is given; a
               gene set's score is the mean over spots of the value computed on the set's genes only.
- ``section``: ``fn(truth, pred, **needs) -> float`` over the spots and the set's genes it is given.

``needs`` (keyword arguments the function receives): ``counts`` (raw counts of the same spots and genes),
``coords`` (``coords``: array coordinates, and ``graph``: the sparse spot graph within each section),
``ranks`` (``ranks`` and ``truth_ranks``: each matrix's ranks within each gene, average ties; computed
once per block and shared by Spearman and the AUCs).
NaN marks an undefined value (zero variance, an empty class): it is counted, never averaged in as 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bench.errors import UnknownNameError
from bench.evaluation import published
from bench.evaluation.metrics import column_ranks, mae_per_gene, mse_per_gene, pearson_per_gene, pearson_pvalue

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "stbench.metrics"
LEVELS = ("gene", "spot", "section")
NEEDS = ("counts", "coords", "ranks")
HEADLINE = "pearson"  # the number the terminal, summary.csv and the report's first card lead with


class UnknownMetricError(UnknownNameError, ValueError):
    """A metric name that no registry entry has (a ``UserError``: the CLI prints it and exits 2)."""


class MetricFailedError(RuntimeError):
    """A metric's function raised (or returned the wrong shape): the evaluation leaves that metric out and
    names it (``bench.evaluation.evaluate.evaluate_jobs``)."""

    def __init__(self, metric: str, error: BaseException | str):
        detail = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        super().__init__(f"metric {metric} failed: {detail}")
        self.metric = metric


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable
    level: str  # "gene", "spot" or "section"
    higher_is_better: bool | None  # None: descriptive (reported, not ranked)
    needs: tuple[str, ...] = ()
    label: str = ""  # short column title
    source: str = ""  # where the definition comes from
    origin: str = field(default="built-in", compare=False)

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"metric name {self.name!r}: use lower-case letters, digits and _")
        if self.level not in LEVELS:
            raise ValueError(f"metric {self.name}: level {self.level!r} is not one of {', '.join(LEVELS)}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric {self.name}: needs {sorted(unknown)} not among {', '.join(NEEDS)}")

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓"}.get(self.higher_is_better, "·")

    @property
    def title(self) -> str:
        return self.label or self.name


def _auc(cutoff):
    def fn(truth, pred, counts, ranks, truth_ranks):
        return published.auc_at(counts, pred, cutoff, ranks=ranks)
    fn.__doc__ = f"AUC of the prediction for raw count > {cutoff} (``published.auc_at``)."
    return fn


_HE = "HEtoSGEBench benchmarkUtils.R"
_BUILT_IN = [
    Metric("pearson", lambda t, p: pearson_per_gene(t, p), "gene", True, label="PCC", source="Pearson r"),
    # Spearman rho: Pearson r of the ranks (the block ranks each matrix once; the AUCs share the prediction's).
    Metric("spearman", lambda t, p, ranks, truth_ranks: pearson_per_gene(truth_ranks, ranks), "gene", True,
           needs=("ranks",), label="Spearman", source="Spearman rho"),
    Metric("mse", lambda t, p: mse_per_gene(t, p), "gene", False, label="MSE", source="SpaRED MSE"),
    Metric("mae", lambda t, p: mae_per_gene(t, p), "gene", False, label="MAE", source="SpaRED MAE"),
    Metric("rmse", published.rmse, "gene", False, label="RMSE", source="HEtoSGEBench 00-CombineDat.Rmd"),
    Metric("nrmse_range", published.nrmse_range, "gene", False, label="NRMSE range",
           source=f"{_HE} calculate_nrmse"),
    Metric("nrmse_sd", published.nrmse_sd, "gene", False, label="NRMSE sd", source=f"{_HE} calculate_nrmse"),
    Metric("nmi", published.normalised_mutual_information, "gene", True, label="NMI",
           source=f"{_HE} calculate_MI"),
    Metric("js_divergence", published.jensen_shannon, "gene", False, label="JSD",
           source=f"{_HE} calculate_JS_divergence"),
    Metric("ssim", published.ssim_global, "gene", True, label="SSIM", source=f"{_HE} calculate_SSIM"),
    *[Metric(f"auc_{c}", _auc(c), "gene", True, needs=("counts", "ranks"), label=f"AUC>{c}",
             source=f"{_HE} calculate_AUC") for c in published.AUC_CUTOFFS],
    Metric("r2_gene", published.r2_per_gene, "gene", True, label="R² gene", source="SpaRED r2_score_gene"),
    Metric("pcc_spot", published.pcc_per_spot, "spot", True, label="PCC spot", source="SpaRED pearsonr_patch"),
    Metric("r2_spot", published.r2_per_spot, "spot", True, label="R² spot", source="SpaRED r2_score_patch"),
    Metric("moran_prediction", lambda t, p, graph, coords: published.morans_i(p, graph), "gene", None,
           needs=("coords",), label="Moran's I pred", source="Moran's I of the prediction"),
    Metric("moran_truth", lambda t, p, graph, coords: published.morans_i(t, graph), "gene", None,
           needs=("coords",), label="Moran's I truth", source="Moran's I of the truth"),
]
_REGISTRY: dict[str, Metric] = {m.name: m for m in _BUILT_IN}
# Per-gene columns the job's per-gene table carries right after a metric's values, computed from them and
# the number of spots: a reading aid, never aggregated, ranked or logged (a mean of p-values is no score).
BESIDE: dict[str, tuple[str, Callable]] = {
    "pearson": ("pearson_p", pearson_pvalue),  # two-sided p-value of each gene's r
}
_entry_points_loaded = False


def register(metric: Metric, replace: bool = False) -> Metric:
    """Add a metric to the registry (a name already taken is refused unless ``replace``)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register() takes a bench.evaluation.metric_registry.Metric, not {type(metric).__name__}")
    if metric.name in _REGISTRY and not replace:
        raise ValueError(f"metric {metric.name!r} is already registered ({_REGISTRY[metric.name].origin})")
    _REGISTRY[metric.name] = metric
    return metric


def _load_entry_points() -> None:
    """Metrics other packages declare under ``[project.entry-points."stbench.metrics"]``: each entry point
    names a ``Metric`` (or a callable returning one). A broken one is reported and skipped."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            metric = obj() if callable(obj) and not isinstance(obj, Metric) else obj
            if not isinstance(metric, Metric):
                raise TypeError(f"it gives a {type(metric).__name__}, not a Metric")
            if metric.name in _REGISTRY:
                raise ValueError(f"the name {metric.name!r} is already registered")
            _REGISTRY[metric.name] = Metric(**{**metric.__dict__, "origin": f"entry point {ep.value}"})
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not stop the evaluation
            log.warning("metric entry point %s (%s) skipped: %s", ep.name, ep.value, exc)


def all_metrics() -> dict[str, Metric]:
    _load_entry_points()
    return dict(_REGISTRY)


def resolve(names=None) -> list[Metric]:
    """The metrics to compute: all registered ones (``None``) or those named (a list or a comma-separated
    string), in registry order. The headline Pearson r is always included. An unknown name is refused."""
    known = all_metrics()
    if names is None:
        return list(known.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownMetricError(f"unknown metric {', '.join(map(repr, unknown))}; known metrics: "
                                 f"{', '.join(known)}")
    wanted = {HEADLINE, *names}
    return [m for m in known.values() if m.name in wanted]


def names(metrics: list[Metric]) -> list[str]:
    return [m.name for m in metrics]


def directions(metrics: list[Metric]) -> dict[str, bool | None]:
    return {m.name: m.higher_is_better for m in metrics}


# ---- computing them ---------------------------------------------------------------------------------------

class Block:
    """The spots scored together (a job's pooled test spots, or one section's): the targets, the prediction
    and, computed on first use, what metrics need."""

    def __init__(self, truth, pred, counts=None, coords=None, section_ids=None):
        self.truth = np.asarray(truth, dtype=np.float64)
        self.pred = np.asarray(pred, dtype=np.float64)
        if self.truth.shape != self.pred.shape or self.truth.ndim != 2:
            raise ValueError(f"truth {self.truth.shape} and prediction {self.pred.shape} must be the same "
                             f"(spots, genes) shape")
        self.counts = None if counts is None else np.asarray(counts, dtype=np.float64)
        self.coords = None if coords is None else np.asarray(coords, dtype=np.float64)
        self.section_ids = section_ids
        self._graph = self._ranks = self._truth_ranks = None

    def available(self, metric: Metric) -> bool:
        return all(getattr(self, n if n != "ranks" else "pred") is not None for n in metric.needs)

    def kwargs(self, metric: Metric, genes=None) -> dict:
        out = {}
        for need in metric.needs:
            if need == "counts":
                out["counts"] = self.counts if genes is None else self.counts[:, genes]
            elif need == "coords":
                if self._graph is None:
                    self._graph = published.spot_graph(self.coords, self.section_ids)
                out.update(coords=self.coords, graph=self._graph)
            elif need == "ranks":
                if self._ranks is None:
                    self._ranks, self._truth_ranks = column_ranks(self.pred), column_ranks(self.truth)
                out["ranks"] = self._ranks if genes is None else self._ranks[:, genes]
                out["truth_ranks"] = self._truth_ranks if genes is None else self._truth_ranks[:, genes]
        return out


def per_gene(block: Block, metrics: list[Metric]) -> dict[str, np.ndarray]:
    """Every gene-level metric over the block's spots, one array over genes each (NaN where a metric needs
    what the block lacks, e.g. raw counts of a job folder written before they were saved)."""
    n_genes = block.truth.shape[1]
    out = {}
    for m in metrics:
        if m.level != "gene":
            continue
        if not block.available(m):
            out[m.name] = np.full(n_genes, np.nan)
            continue
        values = np.asarray(_call(m, block.truth, block.pred, **block.kwargs(m)), dtype=np.float64)
        if values.shape != (n_genes,):
            raise MetricFailedError(m.name, f"returned shape {values.shape}, expected ({n_genes},)")
        out[m.name] = values
    return out


def with_columns_beside(block: Block, gene_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``per_gene``'s values with the columns of ``BESIDE`` after their metric's, for the per-gene tables."""
    out = {}
    for name, values in gene_values.items():
        out[name] = values
        if name in BESIDE:
            column, fn = BESIDE[name]
            out[column] = fn(values, len(block.truth))
    return out


def _call(metric: Metric, *args, **kwargs):
    """The metric's function; anything it raises is that metric's failure, named (a plug-in metric's bug
    must cost its own column, not the evaluation)."""
    try:
        return metric.fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the metric's name
        raise MetricFailedError(metric.name, exc) from exc


def set_value(block: Block, metric: Metric, mask: np.ndarray) -> tuple[float, int]:
    """(score, number of undefined spots) of a spot- or section-level metric on the genes of ``mask``."""
    if not mask.any() or not block.available(metric):
        return float("nan"), 0
    genes = np.flatnonzero(mask)
    values = _call(metric, block.truth[:, genes], block.pred[:, genes], **block.kwargs(metric, genes))
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    finite = np.isfinite(values)
    return (float(values[finite].mean()) if finite.any() else float("nan")), int((~finite).sum())


def aggregates(block: Block, metrics: list[Metric], gene_values: dict[str, np.ndarray],
               sets: dict[str, np.ndarray]) -> dict[str, float]:
    """``<set>_<metric>`` for every gene set and metric, ``n_undefined_<metric>`` over the panel (genes for
    gene-level metrics, spots for spot-level ones) and ``n_genes``."""
    out: dict[str, float] = {}
    for m in metrics:
        if m.level == "gene":
            values = gene_values[m.name]
            finite = np.isfinite(values)
            for s, mask in sets.items():
                sel = finite & mask
                out[f"{s}_{m.name}"] = float(values[sel].mean()) if sel.any() else float("nan")
            out[f"n_undefined_{m.name}"] = int((~finite).sum())
        else:
            for s, mask in sets.items():
                value, undefined = set_value(block, m, mask)
                out[f"{s}_{m.name}"] = value
                if s == "acg":
                    out[f"n_undefined_{m.name}"] = undefined
    out["n_genes"] = int(block.truth.shape[1])
    return out
