"""A benchmark's settings (``BenchConfig``): the one source of truth, saved with the run and with every job.

``BenchConfig.resolved()`` makes the run's plan: the same settings with every machine-dependent default filled
and everything checked that can be checked before any data is read (names, options, each method's parameters
against its declaration, each image encoder's availability), and ``method_params`` filled with every
constructor parameter of each method. Below the pipeline, the runner and each job read the plan as plain
values (``make_method`` builds a method from ``method_params``); nothing re-resolves it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.data.locations import resolve_cache_dir, resolve_data_dir
from bench.data.preprocess import DEFAULT_TARGET, parse_panel, parse_target
from bench.data.splits import VALIDATION_SOURCES, parse_protocol
from bench.errors import InputError
from bench.method import ENCODER_PARAMS, PRETRAINED, Method, check_parameters, method_parameters, resolve_profile
from bench.nn.encoders import check_available
from bench.nn.torch_utils import resolve_device
from bench.registry import get_method_class
from bench.run import EXECUTORS
from bench.run.tracking import default_tracking_uri

# The quick profile's fixed optimisation budget per fold: every method of a fold trains on the same random
# QUICK_MAX_TRAIN_SPOTS training spots (seeded), so a CPU run costs the same whatever the cohort's size (the
# full her2st cohort has ~12k training spots per lopo fold: a day on 2 cores at the quick profile's speed).
# Test spots are never subsampled. The paper profile trains on every spot. --max-train-spots overrides.
QUICK_MAX_TRAIN_SPOTS = 256
# What a job may ask a cluster for. Defaults come from the method's ``resources``; --resources overrides.
RESOURCE_KEYS = ("gpus", "cpus", "mem_gb", "time_min")
SLURM_KEYS = ("partition", "account", "array_parallelism", "qos")


@dataclass
class BenchConfig:
    """Every setting of a run. ``resolved()`` fills the machine-dependent defaults and validates names."""

    methods: list[str]
    dataset: str = "her2st"
    protocol: str = "lopo"
    seeds: list[int] = field(default_factory=lambda: [0])
    panel: str = "hvg:250"
    target: str = DEFAULT_TARGET  # what methods train on and are scored against (bench.data.preprocess.TARGETS)
    # Training spots per fold: "auto" (QUICK_MAX_TRAIN_SPOTS in the quick profile, all in the paper profile),
    # a number, or None (all).
    max_train_spots: int | str | None = "auto"
    out: str = "runs"
    data_dir: str | None = None
    # Options of the dataset's loader (``--data-option KEY=VALUE``, e.g. patient_key=donor), as given.
    data_options: dict[str, str] = field(default_factory=dict)
    cache_dir: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    device: str = "auto"
    profile: str = "auto"  # "paper", "quick", or "auto" (paper on CUDA, quick on CPU)
    pretrained: str = "auto"
    folds: list[int] | None = None  # run only these fold indices (None: all)
    params: dict[str, dict] = field(default_factory=dict)  # method name -> hyper-parameter overrides
    progress: bool = True
    executor: str = "local"  # "local" (this machine) or "slurm" (submitit)
    jobs: int = 1  # local executor: jobs run at once, each in its own process when > 1
    # torch CPU threads per job; None: torch's default (every core of the machine or SLURM allocation).
    # Results depend on it (parallel reductions add in another order), so it never follows --jobs.
    threads: int | None = None
    # Resource requests per method ("all" = every method): {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 240}
    resources: dict[str, dict] = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)  # partition, account, qos, array_parallelism
    # Where the validation set of a method that asks for one comes from (bench.data.splits.VALIDATION_SOURCES):
    # "training-patients" (whole patients of the training side, seeded; the honest default) or "test-fold"
    # (the test sections with their truth: only `bench reproduce` sets it, to rerun a published run that
    # chose its epoch on the test data; every such job is flagged validation_leaks_test).
    validation: str = "training-patients"
    # The plan's methods: every constructor parameter of each method (its profile's values, its published
    # settings for the dataset, the user's overrides), checked. Filled by ``resolved()``; given, it is ignored.
    method_params: dict[str, dict] = field(default_factory=dict)

    @property
    def planned(self) -> bool:
        """Whether this config is a plan (made by ``resolved()``) for its methods."""
        return list(self.method_params) == list(self.methods)

    def resolved(self) -> "BenchConfig":
        """The run's plan: a new config with every default that depends on the machine filled, every name,
        option and method parameter checked, each image encoder found available, and ``method_params`` filled.
        Builds no method and reads no data (the dataset's module only, for its options)."""
        parse_protocol(self.protocol)
        parse_panel(self.panel)
        parse_target(self.target)
        if self.pretrained not in PRETRAINED:
            raise InputError(f"unknown pretrained mode {self.pretrained!r}; valid: {', '.join(PRETRAINED)}")
        for m in self.params:
            if m not in self.methods:
                raise InputError(f"parameters given for method {m!r}, which is not among --methods")
        # The methods' parameters first: the commonest mistake, refused before the dataset modules are read.
        device = resolve_device(self.device)
        profile = resolve_profile(self.profile, device)
        method_params = {m: self._method_params(m, profile) for m in self.methods}
        if self.executor not in EXECUTORS:
            raise InputError(f"unknown executor {self.executor!r}; valid executors: {', '.join(EXECUTORS)}")
        if int(self.jobs) < 1:
            raise InputError(f"--jobs must be at least 1, got {self.jobs}")
        for who, request in self.resources.items():
            if who != "all" and who not in self.methods:
                raise InputError(f"resources given for method {who!r}, which is not among --methods")
            unknown = sorted(set(request) - set(RESOURCE_KEYS))
            if unknown:
                raise InputError(f"unknown resource(s) {unknown}; valid: {', '.join(RESOURCE_KEYS)}")
        if self.validation not in VALIDATION_SOURCES:
            raise InputError(f"unknown validation source {self.validation!r}; valid: {', '.join(VALIDATION_SOURCES)}")
        if self.threads is not None and int(self.threads) < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        unknown = sorted(set(self.slurm) - set(SLURM_KEYS))
        if unknown:
            raise InputError(f"unknown SLURM option(s) {unknown}; valid: {', '.join(SLURM_KEYS)}")
        from bench.data.locations import parse_data_options
        from bench.registry import get_dataset_module

        parse_data_options(get_dataset_module(self.dataset), self.data_options, self.dataset)
        out = Path(self.out).expanduser().resolve()
        cap = self.max_train_spots
        if cap == "auto":
            cap = QUICK_MAX_TRAIN_SPOTS if profile == "quick" else None
        elif cap is not None and (not str(cap).isdigit() or int(cap) < 1):
            raise InputError(f"--max-train-spots must be a whole number of at least 1, 'all' or 'auto', got {cap!r}")
        self._check_encoders(method_params)  # last: the one check that may ask the network
        # Only what resolving changes is named; every other field is carried over as it is (copied where it
        # is mutable, so the resolved config shares no list or dict with this one).
        return replace(
            self, methods=list(self.methods), seeds=list(self.seeds), out=str(out),
            data_dir=str(resolve_data_dir(self.data_dir)), data_options=dict(self.data_options),
            cache_dir=str(resolve_cache_dir(self.cache_dir)),
            tracking_uri=self.tracking_uri or default_tracking_uri(out),
            experiment=self.experiment or f"stbench-{self.dataset}-{self.protocol}",
            device=device, profile=profile, max_train_spots=None if cap is None else int(cap),
            params={k: dict(v) for k, v in self.params.items()}, jobs=int(self.jobs),
            resources={k: dict(v) for k, v in self.resources.items()}, slurm=dict(self.slurm),
            method_params=method_params)

    def _method_params(self, name: str, profile: str) -> dict:
        """Every constructor parameter the method will be built with, checked against its declaration (the
        user's --set first, so a typo is named as theirs); builds nothing."""
        cls = get_method_class(name)
        given = method_parameters(cls, profile, self.params.get(name, {}), dataset=self.dataset)
        defaults = cls.parameter_defaults()
        required = [p for p in cls.param_names() if p not in defaults and p not in given]
        if required:
            raise InputError(f"method {name!r}: parameter(s) {required} have no default; give them with "
                             f"--set {name}.{required[0]}=VALUE")
        return {**defaults, **given}

    def _check_encoders(self, method_params: dict[str, dict]) -> None:
        """An image encoder that cannot be had here (offline, gated, no such file) is refused once, now, rather
        than once per job; each encoder is checked once however many methods take it."""
        checked = set()
        for params in method_params.values():
            for name in (params.get(p) for p in ENCODER_PARAMS):
                if isinstance(name, str) and name and name not in checked:
                    check_available(name, self.pretrained)
                    checked.add(name)


def planned_params(config: BenchConfig, name: str) -> dict:
    """A method's parameters as the plan holds them (``config`` is ``resolved()``): what the driver needs of a
    method (its jobs' configuration hash, its MLflow run) without building it."""
    if name not in config.method_params:
        raise ValueError(f"method {name!r} is not in the run's plan: build it with BenchConfig.resolved() first")
    return dict(config.method_params[name])


def make_method(config: BenchConfig, name: str) -> Method:
    """The method as the plan says, built from its parameters: once per job, and nowhere else in a run. The job
    checks them against the declaration again (cheap), as a plan may come from a file or another version."""
    cls = get_method_class(name)
    return cls(**check_parameters(cls, planned_params(config, name)))


def job_resources(config: BenchConfig, method_name: str) -> dict:
    """What one job of this method asks a cluster for: the suite's defaults, then the method's own
    ``resources``, then the user's ``all`` and per-method overrides. GPUs are asked for only when the run's
    device is CUDA."""
    cls = get_method_class(method_name)
    request = {"gpus": 1 if str(config.device).startswith("cuda") else 0, "cpus": 4, "mem_gb": 16,
               "time_min": 120}
    request.update(getattr(cls, "resources", {}) or {})
    if not str(config.device).startswith("cuda"):
        request["gpus"] = 0  # a method's GPU request means nothing in a CPU run
    request.update(config.resources.get("all", {}))
    request.update(config.resources.get(method_name, {}))
    return request
