"""The method contract as checks a method's author can run: ``check_method``, in the spirit of scikit-learn's
``check_estimator``, and ``python -m bench check METHOD`` on top of it.

The test suite runs the same functions on every registered method (tests/methods/test_methods.py), so a method that
passes ``bench check`` meets the contract the built-in methods are held to:

- ``listing``: `bench list` reads its name, kind and description from the source without importing it;
- ``hyperparameters``: hyper-parameters only in the constructor (each with a default, stored under its own
  name, nothing else set there); ``fit`` and ``predict`` take only the data; fitting leaves them unchanged;
- ``prediction``: ``predict`` returns ``(n_test_spots, n_genes)`` finite values;
- ``test_truth``: it never reads the test side's expression: the harness withholds it (None), and a second
  prediction with the test side's expression and counts poisoned (all NaN) must be identical;
- ``determinism``: two fits with the same seed predict exactly the same (these two checks fit on
  ``SMALL_SPOTS`` training spots and predict as many test spots, to save time);
- ``learning``: with its quick profile it learns the planted signal of the synthetic dataset
  (datasets/synthetic.py): mean Pearson r >= 0.3 on the planted genes (methods only, not controls).

The fits run on fold 0 (leave-one-patient-out) of the synthetic dataset, on the CPU unless told otherwise,
with randomly initialised image encoders (``pretrained="no"``: no download, and the planted signal is colour).
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from bench.errors import InputError, UnknownNameError
from bench.method import KINDS, Method, Runtime, build_method, validate_predictions
from bench.parameters import declaration_problems
from bench.plugins import METHOD_ENTRY_POINTS, load_module_from_path
from bench.registry import (
    SourceNotStatic,
    get_method_class,
    is_method_class,
    method_catalogue,
    methods_defined_in,
    methods_in_source,
)

CHECKS = ("listing", "hyperparameters", "prediction", "test_truth", "determinism", "learning")
LEARNING_MIN_PEARSON = 0.3  # mean r on the planted genes, as the test suite has always asked
PANEL = "top-mean:40"  # every gene of the synthetic dataset
# The determinism and test-truth checks compare two fits (and two predictions) on this many training and test
# spots of the fold: any size shows whether a method draws unseeded randomness or reads the truth, and a small
# one keeps `bench check` within minutes on a CPU (the learning check fits on every training spot).
SMALL_SPOTS = 64


class NotAMethodError(InputError):
    """``bench check``'s argument names no checkable method: a file without a Method subclass, one that fails
    to import, a method without ``name``, or a name nothing registers (bad input: exit 2)."""


@dataclass(frozen=True)
class CheckResult:
    method: str
    check: str
    status: str  # "pass", "fail" or "skip" (does not apply, or could not run because an earlier step failed)
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def __str__(self) -> str:
        return f"{self.status.upper():<4}  {self.check:<15}  {self.detail}"


# --- Which method ---------------------------------------------------------------------------------------

def resolve_methods(target: str) -> list[type[Method]]:
    """The method classes ``target`` names: a method file (every named Method subclass it defines), an
    entry point of the ``stbench.methods`` group, or a registered method name."""
    path = Path(target).expanduser()
    if path.suffix == ".py" or path.is_file() or "/" in target:
        return _classes_in_file(path)
    for ep in entry_points(group=METHOD_ENTRY_POINTS, name=target):
        try:
            cls = ep.load()
        except Exception as exc:
            raise NotAMethodError(f"entry point {target} ({ep.value}) fails to import: {_one_line(exc)}") from None
        if not (is_method_class(cls) and cls is not Method):
            raise NotAMethodError(f"entry point {target} ({ep.value}) is not a bench.method.Method subclass")
        if not getattr(cls, "name", ""):
            raise NotAMethodError(f"entry point {target} ({ep.value}): class {cls.__qualname__} has no `name`")
        return [cls]
    try:
        return [get_method_class(target)]
    except UnknownNameError:
        raise NotAMethodError(f"{target!r} is not a method file, an entry point of {METHOD_ENTRY_POINTS} or a "
                              f"registered method; registered: {', '.join(method_catalogue())}") from None
    except Exception as exc:  # the registered file fails to import
        raise NotAMethodError(f"method {target!r} fails to import: {_one_line(exc)}") from None


def _classes_in_file(path: Path) -> list[type[Method]]:
    if not path.is_file():
        raise NotAMethodError(f"{path}: no such file")
    try:
        module = load_module_from_path(path.resolve(), "methods")
    except Exception as exc:
        raise NotAMethodError(f"{path}: fails to import: {_one_line(exc)}") from None
    classes = methods_defined_in(module)
    if not classes:
        raise NotAMethodError(f"{path}: holds no method (a class deriving from bench.method.Method)")
    named = [cls for cls in classes if getattr(cls, "name", "")]
    if not named:
        raise NotAMethodError(f"{path}: class {classes[0].__qualname__} has no `name` (the name `bench run "
                              f"--methods` takes, e.g. name = \"my-method\")")
    return named


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- Fits shared by the checks ----------------------------------------------------------------------------

@dataclass
class _Fit:
    """One fit and prediction of the method on fold 0; ``error`` says where it went wrong, if it did."""

    method: Method | None = None
    inputs: object = None  # bench.run.inputs.FoldInputs
    params_before: dict | None = None
    returned: object = None  # what fit returned
    prediction: object = None  # as predict returned it
    error: str | None = None
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0


class _Trial:
    """The data and the fits the checks share, each made once when a check first needs it."""

    def __init__(self, cls: type[Method], profile: str, params: dict, dataset, cache_dir: Path, seed: int,
                 device: str):
        self.cls, self.profile, self.params = cls, profile, params
        self.seed, self.device, self.cache_dir = seed, device, cache_dir
        self._dataset = dataset
        self._fits: dict[str, _Fit] = {}
        self._fold = None

    @property
    def dataset(self):
        if self._dataset is None:
            from bench.data.locations import load_dataset

            self._dataset = load_dataset("synthetic", None)
        return self._dataset

    def fold_and_genes(self):
        if self._fold is None:
            from bench.data.preprocess import parse_panel
            from bench.data.splits import make_folds
            from bench.run.inputs import fold_panel

            patient_of = {s: self.dataset[s].patient_id for s in self.dataset.imaged_sections()}
            fold = make_folds("lopo", patient_of, seed=0)[0]
            self._fold = fold, fold_panel(self.dataset, fold, parse_panel(PANEL))
        return self._fold

    def build(self) -> Method:
        return build_method(self.cls, self.profile, self.params)

    def fit(self, which: str = "main") -> _Fit:
        """Build, fit and predict: ``main`` on the whole fold; ``small`` and ``small again`` (the same, from
        scratch) on ``SMALL_SPOTS`` training and test spots."""
        if which not in self._fits:
            self._fits[which] = self._fit(small=which != "main")
        return self._fits[which]

    def fitted(self, which: str) -> _Fit | None:
        """The fit made so far, if any (None: no check has needed it)."""
        return self._fits.get(which)

    def _fit(self, small: bool) -> _Fit:
        from bench.data.patches import PatchStore
        from bench.nn.torch_utils import seed_everything
        from bench.run.inputs import method_fold_inputs

        out = _Fit()
        step = "building it"
        try:
            out.method = method = self.build()
            method.runtime = Runtime(seed=self.seed, device=self.device, pretrained="no", progress=False)
            step = "preparing its inputs"
            fold, genes = self.fold_and_genes()
            seed_everything(self.seed)  # a randomly initialised frozen encoder is built from it
            out.inputs, _ = method_fold_inputs(method, self.dataset, fold, genes, PatchStore(self.cache_dir),
                                               pretrained="no", device=self.device, seed=self.seed,
                                               max_train_spots=SMALL_SPOTS if small else None)
            if small and len(out.inputs.test) > SMALL_SPOTS:
                rows = np.sort(np.random.default_rng(self.seed).choice(len(out.inputs.test), SMALL_SPOTS,
                                                                       replace=False))
                out.inputs = dataclasses.replace(out.inputs, test=out.inputs.test.subset(rows),
                                                 truth=out.inputs.truth[rows],
                                                 test_labels={k: v[rows] for k, v in out.inputs.test_labels.items()})
            out.params_before = method.get_params()
            step = "fit"
            seed_everything(self.seed)  # again: the encoder above is built only when its embeddings are not cached
            start = time.perf_counter()
            if out.inputs.validation is not None:  # as the harness calls it (bench.run.job)
                out.returned = method.fit(out.inputs.train, validation=out.inputs.validation)
            else:
                out.returned = method.fit(out.inputs.train)
            out.fit_seconds = time.perf_counter() - start
            step = "predict"
            out.prediction, out.predict_seconds = self.predict(method, out.inputs.test)
        except Exception as exc:
            out.error = f"{step} raised {_one_line(exc)}{_where(exc)}"
        return out

    def predict(self, method: Method, test) -> tuple[object, float]:
        from bench.nn.torch_utils import seed_everything

        seed_everything(self.seed)  # each prediction from the same state: a random TTA draws alike
        start = time.perf_counter()
        pred = method.predict(test)
        return pred, time.perf_counter() - start


def _where(exc: BaseException) -> str:
    """The innermost frame outside the suite's own package and installed libraries (numpy, torch ...), so the
    author sees the line of the method to fix."""
    bench_dir = str(Path(__file__).resolve().parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(bench_dir) and "-packages" not in f.filename
              and not f.filename.startswith("<")]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


# --- The checks -------------------------------------------------------------------------------------------

def _check_listing(trial: _Trial) -> tuple[str, str]:
    cls = trial.cls
    if cls.kind not in KINDS:
        return "fail", f"kind {cls.kind!r} is none of {', '.join(KINDS)}"
    if not cls.description:
        return "fail", "description is empty: `bench list` shows it beside the name"
    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if not source or not source.endswith(".py") or not Path(source).is_file():
        return "fail", f"no source file for module {cls.__module__}: `bench list` reads methods from .py files"
    try:
        found = methods_in_source(Path(source).read_text(), source, cls.__name__)
    except (SourceNotStatic, SyntaxError, ValueError):
        found = []
    if len(found) != 1:
        return "fail", (f"`bench list` cannot read class {cls.__qualname__} from {source} without importing it: "
                        f"give name, kind and description as string literals on a top-level class that "
                        f"derives from bench.method.Method (directly or through classes of the same file)")
    listed = found[0]
    loaded = (cls.name, cls.kind, cls.description)
    if (listed.name, listed.kind, listed.description) != loaded:
        return "fail", (f"the source reads as name={listed.name!r}, kind={listed.kind!r}, "
                        f"description={listed.description!r} but the class has {loaded}")
    return "pass", f"`bench list` reads name {cls.name!r}, kind {cls.kind!r} and the description from {source}"


def _check_hyperparameters(trial: _Trial) -> tuple[str, str]:
    cls = trial.cls
    # No constructor of its own (object's, which takes *args) is a method without hyper-parameters.
    own_init = cls.__init__ is not object.__init__
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"] if own_init else []
    varargs = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if varargs:
        return "fail", f"the constructor takes *{varargs[0]}: name each hyper-parameter, with its default"
    no_default = [p.name for p in params if p.default is p.empty]
    if no_default:
        return "fail", f"constructor parameter(s) {', '.join(no_default)} have no default"
    problems = declaration_problems(cls)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return "fail", f"parameter_constraints: {problems[0]}{more}"
    for name in ("fit", "predict"):
        extra = [p for p in inspect.signature(getattr(cls, name)).parameters.values()][2:]
        if name == "fit":  # the harness's inner validation set (Method.wants_validation) is data, not a setting
            extra = [p for p in extra if not (p.name == "validation" and p.default is None)]
        if extra:
            return "fail", (f"{name} takes {', '.join(p.name for p in extra)} besides the data: hyper-parameters "
                            f"belong in the constructor")
    try:
        method = trial.build()
    except Exception as exc:
        return "fail", f"building it with the {trial.profile} profile raised {_one_line(exc)}{_where(exc)}"
    names = cls.param_names()
    unset = [n for n in names if n not in vars(method)]
    if unset:
        return "fail", f"the constructor does not store {', '.join(unset)} as self.<name> (get_params reads them)"
    extra = sorted(set(vars(method)) - set(names) - {"_runtime"})
    if extra:
        return "fail", (f"the constructor sets {', '.join(extra)}, which are not parameters: it must only store its "
                        f"parameters (compute the rest in fit)")
    given = method.get_params()
    try:
        again = cls(**given).get_params()
    except Exception as exc:
        return "fail", f"rebuilding it from get_params() raised {_one_line(exc)}"
    if not _same(again, given):
        changed = [n for n in names if not _same(again[n], given[n])]
        return "fail", f"the constructor changes {', '.join(changed)}: it must store each value as given"
    for profile in cls.profiles:
        try:
            build_method(cls, profile)
        except Exception as exc:
            return "fail", f"profile {profile!r}: {_one_line(exc)}"
    for dataset in cls.dataset_settings:
        try:
            build_method(cls, "paper", dataset=dataset)
        except Exception as exc:
            return "fail", f"dataset_settings[{dataset!r}]: {_one_line(exc)}"
    declared = sum(n in cls.parameter_constraints for n in names)
    detail = (f"{len(names)} constructor parameter(s), each with a default, stored under its name ({declared} "
              f"declared in parameter_constraints, the rest checked by their default's type)" if names
              else "no constructor parameters")
    fit = trial.fit()
    if fit.params_before is None or fit.error and fit.error.startswith("fit"):
        return "pass", detail + "; unchanged by fit not checked (no fit: see prediction)"
    after = fit.method.get_params()
    changed = [n for n in names if not _same(after[n], fit.params_before[n])]
    if changed:
        return "fail", f"fit changed hyper-parameter(s) {', '.join(changed)}: store what fit learns as new attributes"
    return "pass", detail + "; fit takes only the data and leaves them unchanged"


def _check_prediction(trial: _Trial) -> tuple[str, str]:
    from bench.method import InvalidPredictionError

    fit = trial.fit()
    if fit.error:
        return "fail", fit.error
    if fit.returned is not fit.method:
        return "fail", f"fit returned {type(fit.returned).__name__}, not the method itself (end fit with return self)"
    test, n_genes = fit.inputs.test, len(fit.inputs.genes)
    try:
        validate_predictions(fit.prediction, len(test), n_genes, trial.cls.name)
    except InvalidPredictionError as exc:
        return "fail", str(exc)
    return "pass", (f"({len(test)} spots, {n_genes} genes), all finite (fit {fit.fit_seconds:.1f} s on "
                    f"{len(fit.inputs.train)} spots, predict {fit.predict_seconds:.1f} s)")


def _check_test_truth(trial: _Trial) -> tuple[str, str]:
    cls = trial.cls
    if cls.needs_test_truth:
        if cls.kind != "positive-control":
            return "fail", f"declares needs_test_truth but is of kind {cls.kind!r}: only positive controls may"
        return "skip", "a positive control: it declares needs_test_truth and is given the held-out truth"
    fit = trial.fit("small")
    if fit.error:
        return _small_fit_failed(trial, fit)
    test = fit.inputs.test
    if test.expression is not None or test.counts is not None:  # the harness's side of the contract
        return "fail", "the harness gave the test side its expression or counts"
    n, g = len(test), len(fit.inputs.genes)
    poison = np.full((n, g), np.nan, dtype=np.float32)
    poisoned = dataclasses.replace(test, expression=poison, counts=poison.copy())
    try:
        pred, _ = trial.predict(fit.method, poisoned)
    except Exception as exc:
        return "fail", (f"predict raised {_one_line(exc)}{_where(exc)} when the test side's expression held NaN "
                        f"instead of None: it reads the held-out truth")
    reference = np.asarray(fit.prediction, dtype=np.float32)
    if _same_prediction(pred, reference):
        return "pass", "withheld from predict (None), and the predictions were the same with it poisoned (NaN)"
    again, _ = trial.predict(fit.method, test)
    if not _same_prediction(again, reference):
        return "fail", ("two predictions of the same fitted method differ even with the truth withheld: predict "
                        "must not change the model (call model.eval(); draw randomness from runtime.seed)")
    differ = int(np.sum(~_equal_values(pred, reference))) if np.shape(pred) == reference.shape else reference.size
    return "fail", (f"{differ} predicted values changed when the test side's expression and counts held NaN "
                    f"instead of None: predict reads the held-out truth")


def _check_determinism(trial: _Trial) -> tuple[str, str]:
    first = trial.fit("small")
    if first.error:
        return _small_fit_failed(trial, first)
    second = trial.fit("small again")
    if second.error:
        return "fail", f"the second fit with the same seed failed: {second.error}"
    if not _same_prediction(second.prediction, np.asarray(first.prediction, dtype=np.float32)):
        return "fail", (f"two fits with seed {trial.seed} predicted differently: draw every random number from "
                        f"generators seeded by runtime.seed (the harness seeds python, numpy and torch)")
    return "pass", f"two fits with seed {trial.seed} predicted exactly the same ({SMALL_SPOTS} training spots)"


def _small_fit_failed(trial: _Trial, fit: _Fit) -> tuple[str, str]:
    main = trial.fitted("main")
    if main is not None and main.error:  # the same failure, already reported
        return "skip", "no prediction to compare (see prediction)"
    return "fail", f"on {SMALL_SPOTS} training spots: {fit.error}"


def _check_learning(trial: _Trial) -> tuple[str, str]:
    from bench.evaluation.metrics import pearson_per_gene

    cls = trial.cls
    if cls.kind != "method":
        return "skip", f"a {cls.kind}: not expected to learn from the image"
    fit = trial.fit()
    if fit.error:
        return "skip", "no prediction to score (see prediction)"
    pred = np.asarray(fit.prediction, dtype=np.float32)
    if pred.shape != fit.inputs.truth.shape:
        return "skip", "no prediction of the right shape to score (see prediction)"
    planted = np.isin(fit.inputs.genes, trial.dataset.attrs["planted_genes"])
    r = pearson_per_gene(fit.inputs.truth, pred)[planted]
    mean_r = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    profile = f"the {trial.profile} profile" if trial.profile in cls.profiles else "its defaults"
    where = f"on the {int(planted.sum())} planted genes with {profile}{_params_note(trial.params)}"
    if not np.isfinite(r).all():
        return "fail", (f"Pearson r is undefined for {int((~np.isfinite(r)).sum())} of the {int(planted.sum())} "
                        f"planted genes with {profile}{_params_note(trial.params)}: constant predictions")
    if mean_r < LEARNING_MIN_PEARSON:
        return "fail", f"mean Pearson r {mean_r:.2f} {where}; needs >= {LEARNING_MIN_PEARSON}"
    return "pass", f"mean Pearson r {mean_r:.2f} {where} (needs >= {LEARNING_MIN_PEARSON})"


def _params_note(params: dict) -> str:
    return f" and {', '.join(f'{k}={v}' for k, v in params.items())}" if params else ""


_CHECK_FUNCTIONS: dict[str, Callable[[_Trial], tuple[str, str]]] = {
    "listing": _check_listing,
    "hyperparameters": _check_hyperparameters,
    "prediction": _check_prediction,
    "test_truth": _check_test_truth,
    "determinism": _check_determinism,
    "learning": _check_learning,
}


def _same(a, b) -> bool:
    try:
        return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else bool(a == b)
    except Exception:
        return a is b


def _equal_values(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _same_prediction(pred, reference: np.ndarray) -> bool:
    try:
        arr = np.asarray(pred, dtype=np.float32)
    except (TypeError, ValueError):
        return False
    return arr.shape == reference.shape and bool(_equal_values(arr, reference).all())


# --- Public entry points -------------------------------------------------------------------------------

def iter_checks(method: type[Method] | str, *, checks: tuple[str, ...] | list[str] = CHECKS, profile: str = "quick",
                params: dict | None = None, dataset=None, cache_dir: str | Path | None = None, seed: int = 0,
                device: str = "cpu") -> Iterator[CheckResult]:
    """``check_method``'s results one at a time, as each check finishes (fits are shared between checks)."""
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; checks: {', '.join(CHECKS)}")
    classes = resolve_methods(method) if isinstance(method, str) else [method]
    with tempfile.TemporaryDirectory(prefix="stbench-check-") as scratch:
        for cls in classes:
            trial = _Trial(cls, profile, dict(params or {}), dataset, Path(cache_dir or scratch), seed, device)
            for name in CHECKS:
                if name in checks:
                    status, detail = _CHECK_FUNCTIONS[name](trial)
                    yield CheckResult(cls.name, name, status, detail)


def check_method(method: type[Method] | str, *, checks: tuple[str, ...] | list[str] = CHECKS, profile: str = "quick",
                 params: dict | None = None, dataset=None, cache_dir: str | Path | None = None, seed: int = 0,
                 device: str = "cpu") -> list[CheckResult]:
    """Run the method contract's checks on ``method`` (a Method subclass, a method file, an entry-point name or
    a registered name); returns one ``CheckResult`` per check and method (a file may define several).

    ``checks``: a subset of ``CHECKS``; ``profile`` and ``params``: the hyper-parameters the fits use (the quick
    profile, as ``bench check`` runs it; the test suite cuts compute with ``params``); ``dataset``: a loaded
    synthetic dataset to reuse (default: ``datasets/synthetic.py``'s default size); ``cache_dir``: where patches
    and embeddings are cached (default: a temporary folder, removed afterwards).
    Raises ``NotAMethodError`` when ``method`` names no checkable method."""
    return list(iter_checks(method, checks=checks, profile=profile, params=params, dataset=dataset,
                            cache_dir=cache_dir, seed=seed, device=device))


def run_check(target: str, out=None) -> int:
    """``python -m bench check TARGET``: one line per check; 0 if none failed, else 1."""
    import logging

    out = out or sys.stdout
    # The output is the checks' lines and the method's own messages. The harness's are left out: the synthetic
    # images are coarse for the 165 µm window (the patch cutter warns for every section, about the test data,
    # not the method), and embedding progress is not a finding.
    logging.getLogger("bench.data.patches").setLevel(logging.ERROR)
    logging.getLogger("bench.run.embedding").setLevel(logging.WARNING)
    classes = resolve_methods(target)  # bad input raises here, before anything is printed
    failed = 0
    start = time.perf_counter()
    for cls in classes:
        profile = "its quick profile" if "quick" in cls.profiles else "its defaults (no quick profile)"
        print(f"checking {cls.name} ({_origin(cls)}) with {profile} on fold 0 of the synthetic dataset, on the CPU",
              file=out, flush=True)
        for result in iter_checks(cls):
            failed += result.failed
            print(result, file=out, flush=True)
    verdict = f"{failed} check(s) failed" if failed else "all checks passed"
    print(f"{verdict} ({time.perf_counter() - start:.0f} s)", file=out, flush=True)
    return 1 if failed else 0


def _origin(cls: type) -> str:
    return getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
