"""A benchmark's settings (``BenchConfig``): the one source of truth, saved with the run and with every job."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.data.locations import resolve_cache_dir, resolve_data_dir
from bench.data.preprocess import DEFAULT_TARGET, parse_panel, parse_target
from bench.data.splits import VALIDATION_SOURCES, parse_protocol
from bench.errors import InputError
from bench.method import Method, build_method, declared_params, resolve_profile
from bench.nn.torch_utils import resolve_device
from bench.registry import get_method_class
from bench.run.tracking import default_tracking_uri

EXECUTORS = ("local", "slurm")
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

    def resolved(self) -> "BenchConfig":
        """Fill every default that depends on the machine, validate names, and return a new config."""
        parse_protocol(self.protocol)
        parse_panel(self.panel)
        parse_target(self.target)
        for m in self.methods:
            make_method(self, m)  # unknown names and parameters fail here, before any work
        for m in self.params:
            if m not in self.methods:
                raise InputError(f"parameters given for method {m!r}, which is not among --methods")
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
        device = resolve_device(self.device)
        profile = resolve_profile(self.profile, device)
        cap = self.max_train_spots
        if cap == "auto":
            cap = QUICK_MAX_TRAIN_SPOTS if profile == "quick" else None
        elif cap is not None and (not str(cap).isdigit() or int(cap) < 1):
            raise InputError(f"--max-train-spots must be a whole number of at least 1, 'all' or 'auto', got {cap!r}")
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
            resources={k: dict(v) for k, v in self.resources.items()}, slurm=dict(self.slurm))


def make_method(config: BenchConfig, name: str) -> Method:
    profile = resolve_profile(config.profile, resolve_device(config.device))
    return build_method(get_method_class(name), profile, config.params.get(name, {}), dataset=config.dataset)


def method_params(config: BenchConfig, name: str) -> dict:
    """``make_method(config, name).get_params()`` without building the method: the driver needs a method's
    parameters (its jobs' configuration hash, its MLflow run), and only validation and the job build it."""
    profile = resolve_profile(config.profile, resolve_device(config.device))
    return declared_params(get_method_class(name), profile, config.params.get(name, {}), dataset=config.dataset)


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
