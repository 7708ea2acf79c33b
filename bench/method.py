"""The Method interface, in the spirit of scikit-learn's estimators.

A method is a class with its hyper-parameters (and their published defaults) in the constructor, which
does no work; ``fit(train)`` learns from training spots; ``predict(test)`` returns an
``(n_spots, n_genes)`` array in the panel's gene order. Method files know nothing about MLflow, paths
or the command line: the harness hands them a ``SpotData`` and a ``Runtime``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

from bench.data.patches import PatchSpec, StackedPatches  # noqa: F401 (PatchSpec for method files; StackedPatches: SpotData.patches)
from bench.errors import InputError


@dataclass
class SpotData:
    """What a method sees of one side of a fold. Rows are spots, grouped by section.

    ``expression`` holds the normalised targets (training side; the test side gets None unless the
    method is a positive control). ``counts`` holds raw panel counts for methods that declare
    ``needs_raw_counts`` (e.g. a ZINB likelihood); everyone is still scored against ``expression``.
    ``total_counts`` holds each spot's total count over ALL genes of its section (its sequencing depth, not
    only the panel's share), on both sides, for methods that declare ``needs_total_counts`` (diagnostic
    controls such as depth-oracle: a real method never sees the test spots' depth).
    """

    genes: list[str]
    section_ids: np.ndarray  # (n,) section of each spot
    spot_ids: np.ndarray  # (n,) spot name within its section
    array_coords: np.ndarray  # (n, 2) integer array grid x, y
    pixel_coords: np.ndarray  # (n, 2) full-resolution pixel x, y
    # (n, px, px, 3) uint8 if the method asked for images: index it (patches[rows]) to read rows from the
    # memory-mapped store; np.asarray(patches) loads them all.
    patches: "StackedPatches | np.ndarray | None" = None
    expression: np.ndarray | None = None  # (n, n_genes) float32 targets
    counts: np.ndarray | None = None  # (n, n_genes) raw counts over the panel
    um_per_px: dict[str, float] = field(default_factory=dict)
    # (n, dim) float32 patch embeddings of a frozen encoder, if the method asked for them (``embedding_spec``):
    # computed once per section and encoder and read from the embedding cache by row, like ``patches``.
    embeddings: "StackedPatches | np.ndarray | None" = None
    total_counts: np.ndarray | None = None  # (n,) each spot's count over all genes (its sequencing depth)

    def __len__(self) -> int:
        return len(self.spot_ids)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def sections(self) -> list[tuple[str, np.ndarray]]:
        """(section id, row indices) for each section, in order of first appearance."""
        ids, first = np.unique(self.section_ids, return_index=True)
        return [(sid, np.flatnonzero(self.section_ids == sid)) for sid in ids[np.argsort(first)]]

    def subset(self, rows: np.ndarray) -> "SpotData":
        def take(a):
            return None if a is None else a[rows]

        return SpotData(self.genes, self.section_ids[rows], self.spot_ids[rows], self.array_coords[rows],
                        self.pixel_coords[rows], take(self.patches), take(self.expression),
                        take(self.counts), self.um_per_px, take(self.embeddings), take(self.total_counts))


def _ignore_metric(name: str, value: float, step: int | None = None) -> None:
    pass


@dataclass(frozen=True)
class EmbeddingSpec:
    """The frozen-encoder embeddings a method wants: an encoder name (``bench.nn.encoders``), the tissue
    window in µm, or ``"encoder"`` for the encoder's own field of view (its input px x its native µm/px), and
    the input size (None: the encoder's own; a smaller one makes a CNN cheaper, e.g. in tests).

    ``grid`` > 1 asks for a grid x grid block of adjacent windows centred on each spot (TRIPLEX's 5 x 5
    neighbour view): each window is embedded on its own and a spot's row is the grid² embeddings, row by
    row from the top left, concatenated (``grid² x dim`` values; the centre one is the spot's own window)."""

    encoder: str
    window_um: float | str = 165.0
    px: int | None = None
    grid: int = 1

    def __post_init__(self):
        if not (self.window_um == "encoder" or (isinstance(self.window_um, (int, float)) and self.window_um > 0)):
            raise InputError(f"window_um must be a positive number of µm or 'encoder', got {self.window_um!r}")
        if not (isinstance(self.grid, int) and self.grid >= 1 and self.grid % 2 == 1):
            raise InputError(f"grid must be an odd whole number >= 1 (the spot's window in the centre), got "
                             f"{self.grid!r}")


@dataclass
class Runtime:
    """Set by the harness before ``fit``: where and how to run, and where to report.

    ``facts`` is where a method records what a reader of the results must know (e.g. whether
    pretrained weights were used); the harness logs it with the run.
    """

    seed: int = 0
    device: str = "cpu"
    pretrained: str = "auto"  # "auto" | "yes" | "no"
    progress: bool = True
    log_metric: Callable[[str, float, int | None], None] = _ignore_metric
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """What a registered method is, as every table, figure and report names and draws it."""

    name: str
    label: str  # the report's words
    short: str  # the terminal's (within 100 columns)
    colour: str  # figures and the report's legend
    legend: str

    @property
    def is_method(self) -> bool:
        return self.name == "method"


# The one vocabulary of method kinds: the terminal, the figures and the report all read it.
KINDS = {k.name: k for k in (
    Kind("method", "method", "method", "#3b6ea8", "blue: methods"),
    Kind("positive-control", "positive control", "pos. control", "#7f8fa6", "grey: positive control"),
    Kind("negative-control", "negative control", "neg. control", "#c0906a", "brown: negative control"),
    Kind("diagnostic-control", "diagnostic control", "diag. control", "#8e6bb0",
         "purple: diagnostic control"),
)}


def kind_of(name) -> Kind:
    """The Kind of that name; an unknown one (a plug-in's typo) is shown under its own name, in grey."""
    return KINDS.get(str(name)) or Kind(str(name), str(name), str(name)[:13], "#999999", f"grey: {name}")


class Method:
    """Base class. Subclasses set ``name`` and implement ``fit`` and ``predict``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # "method", "negative-control" or "positive-control" (brackets for every score), or "diagnostic-control"
    # (measures how much of a score one known factor explains, e.g. depth-oracle: sequencing depth).
    kind: ClassVar[str] = "method"
    # Positive controls alone may look at the held-out truth; the harness gives it to no one else.
    needs_test_truth: ClassVar[bool] = False
    needs_raw_counts: ClassVar[bool] = False
    # Each spot's total count over all genes, test spots included (SpotData.total_counts): controls only.
    needs_total_counts: ClassVar[bool] = False
    # Named hyper-parameter sets: "paper" = the published values (the constructor defaults, so usually
    # empty) and "quick" = a documented reduction that runs on a CPU. Methods without them run as is.
    profiles: ClassVar[dict[str, dict]] = {}
    # Published settings that differ by dataset (e.g. mclSTExp on cSCC: ``{"cscc": {"top_k": 600,
    # "distance": "l2"}}``), keyed by dataset name. The constructor defaults are the published HER2+ values;
    # these replace them under the "paper" profile only, after the profile and before the user's overrides.
    dataset_settings: ClassVar[dict[str, dict]] = {}
    # What one job asks a cluster for (keys: gpus, cpus, mem_gb, time_min), over the suite's defaults
    # (1 GPU in a CUDA run, 4 CPUs, 16 GB, 120 min; bench/run/config.py). Users override with --resources.
    resources: ClassVar[dict] = {}

    @property
    def runtime(self) -> Runtime:
        # Created on first use so subclasses need not call super().__init__().
        if "_runtime" not in self.__dict__:
            self._runtime = Runtime()
        return self._runtime

    @runtime.setter
    def runtime(self, value: Runtime) -> None:
        self._runtime = value

    def patch_spec(self) -> PatchSpec | None:
        """The patches this method wants (None: it does not look at images)."""
        return None

    def embedding_spec(self) -> EmbeddingSpec | None:
        """The frozen-encoder embeddings this method wants in ``SpotData.embeddings`` (None: none). The
        harness records the encoder's name, weights hash and whether it was pretrained with the job."""
        return None

    def wants_validation(self) -> bool:
        """Whether ``fit`` takes a validation set (to stop early or choose an epoch). The harness then holds
        whole patients of the training side out (``bench.data.splits.inner_validation_split``, seeded and
        recorded with the job) and passes them as ``fit(train, validation=...)``; a method never chooses it."""
        return False

    def fit(self, train: SpotData, validation: SpotData | None = None) -> "Method":
        raise NotImplementedError

    def predict(self, test: SpotData) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def param_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def get_params(self) -> dict:
        """Hyper-parameters as given to the constructor (each stored under its own name)."""
        return {p: getattr(self, p) for p in self.param_names()}


PROFILES = ("auto", "paper", "quick")


def resolve_profile(profile: str, device: str) -> str:
    """``auto`` means the published setting on a GPU and the quick one on a CPU."""
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    if profile == "auto":
        return "paper" if str(device).startswith("cuda") else "quick"
    return profile


# The dataset whose published values the constructors hold (HER2+, as in every paper of the suite).
DEFAULT_SETTINGS_DATASET = "her2st"


def dataset_settings(cls: type[Method], profile: str, dataset: str | None) -> dict:
    """The method's published settings for ``dataset``: applied under the paper profile only ({} otherwise,
    and for a dataset the method publishes nothing for)."""
    if profile != "paper" or dataset is None:
        return {}
    return dict(cls.dataset_settings.get(dataset, {}))


def dataset_settings_note(cls: type[Method], profile: str, dataset: str | None) -> str | None:
    """One line for the run's log saying which dataset's published values a paper-profile method uses, or
    None when there is nothing to say (no per-dataset settings, another profile, or HER2+ itself)."""
    if profile != "paper" or dataset is None or not cls.dataset_settings:
        return None
    if dataset in cls.dataset_settings:
        settings = ", ".join(f"{k}={v}" for k, v in cls.dataset_settings[dataset].items())
        return f"published settings for dataset {dataset}: {settings}"
    if dataset == DEFAULT_SETTINGS_DATASET:
        return None
    return f"no published settings for dataset {dataset}: using the HER2+ values"


def build_method(cls: type[Method], profile: str, overrides: dict | None = None,
                 dataset: str | None = None) -> Method:
    """An instance with the profile's hyper-parameters, then (paper profile) the method's published
    settings for ``dataset``, then the user's overrides on top."""
    return cls(**constructor_args(cls, profile, overrides, dataset))


def declared_params(cls: type[Method], profile: str, overrides: dict | None = None,
                    dataset: str | None = None) -> dict:
    """What ``build_method(...).get_params()`` gives, without building the method (a build may load
    weights): every constructor parameter's default with ``constructor_args`` on top."""
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.name in cls.param_names()}
    return {**defaults, **constructor_args(cls, profile, overrides, dataset)}


def constructor_args(cls: type[Method], profile: str, overrides: dict | None = None,
                     dataset: str | None = None) -> dict:
    """The keyword arguments ``build_method`` gives the constructor, checked (unknown names, switches)."""
    overrides = overrides or {}
    if cls.needs_total_counts and cls.kind == "method":
        # The test spots' depth is a fact about the held-out truth: only a declared control may read it.
        raise ValueError(f"method {cls.name!r} declares needs_total_counts but is of kind 'method'; only "
                         f"controls may see the test spots' total counts")
    names = set(cls.param_names())
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(f"method {cls.name!r} has no parameter(s) {unknown}; its parameters: "
                         f"{', '.join(cls.param_names()) or 'none'}")
    for where, settings in cls.dataset_settings.items():
        wrong = sorted(set(settings) - names)
        if wrong:  # a mistake in the method file, not the user's
            raise InputError(f"method {cls.name!r}: dataset_settings[{where!r}] names no parameter(s) {wrong}")
    overrides = {name: _as_parameter_type(cls, name, value) for name, value in overrides.items()}
    return {**cls.profiles.get(profile, {}), **dataset_settings(cls, profile, dataset), **overrides}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _as_parameter_type(cls: type[Method], name: str, value):
    """A user's override as the type of the parameter's default: ``--set st-net.tta=false`` arrives as the
    text 'false', which as a bool would be True. Switches take true/false/yes/no/on/off/1/0; anything else
    is taken as it is (a number parameter may also take a word, e.g. ``window_um="encoder"``)."""
    default = inspect.signature(cls.__init__).parameters[name].default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise InputError(f"method {cls.name!r}: parameter {name} is a switch; expected true or false, got {value!r}")
    return value


class InvalidPredictionError(ValueError):
    pass


def validate_predictions(pred, n_spots: int, n_genes: int, method: str, job: str = "") -> np.ndarray:
    """Check a method's output against the contract; returns it as float32."""
    who = f"method {method!r}" + (f" (job {job})" if job else "")
    try:
        arr = np.asarray(pred, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidPredictionError(f"{who} returned predictions that are not numeric ({exc})") from None
    if arr.shape != (n_spots, n_genes):
        raise InvalidPredictionError(f"{who} returned shape {arr.shape}; expected "
                                     f"({n_spots} spots, {n_genes} genes)")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InvalidPredictionError(f"{who} returned {int(bad.sum())} non-finite values "
                                     f"(NaN or inf) in its predictions")
    return arr
