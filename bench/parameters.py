"""Declared hyper-parameters: what each constructor parameter of a method may be, in the spirit of
scikit-learn's ``_parameter_constraints``.

A method declares, in ``Method.parameter_constraints``, each parameter's allowed values as a list of
constraints, any one of which admits a value::

    parameter_constraints = {"epochs": [Interval(int, 1, None)], "distance": [Options("l1", "l2", "cosine")],
                             "window_px": [Interval(int, 1, None), None], "augment": [bool]}

A constraint is ``Interval`` (a whole number or a number in a range), ``Options`` (one of some values), a
type (``bool``, ``str``, ``int``, ``float``) or ``None`` (the value None). This one declaration is read by
the run's plan (every ``--set``, before any data is read), by each job when it builds the method, by
``bench list <method>`` and by ``bench check``. A parameter a method does not declare (a plug-in's) is
checked against the type of its default only.
"""
from __future__ import annotations

import inspect
import numbers

from bench.errors import InputError

_CLOSED = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}


class Interval:
    """A whole number (``int``) or a number (``float``, which admits whole numbers too) between ``low`` and
    ``high`` (None: unbounded); ``closed`` says which ends belong to it: both, left, right or neither."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, closed: str = "both"):
        if kind not in (int, float) or closed not in _CLOSED:
            raise ValueError(f"Interval(kind int or float, closed one of {list(_CLOSED)}), got {kind!r}, {closed!r}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False  # True is an int to Python, never a count to a user
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        return self.high is None or not (value > self.high or (value == self.high and self.closed in ("left", "neither")))

    def __str__(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        left, right = _CLOSED[self.closed]
        if self.high is None and self.low is not None:
            return f"{what} {'>=' if left == '[' else '>'} {self.low}"
        if self.low is None and self.high is not None:
            return f"{what} {'<=' if right == ']' else '<'} {self.high}"
        if self.low is None:
            return what
        return f"{what} in {left}{self.low}, {self.high}{right}"


class Options:
    """One of a fixed set of values (e.g. the names a switch between algorithms takes)."""

    def __init__(self, *values):
        self.values = values

    def accepts(self, value) -> bool:
        # 1 == True in Python: an option list of words must not admit a number that equals one of them.
        return any(type(value) is type(v) and value == v for v in self.values)

    def __str__(self) -> str:
        if len(self.values) == 1:
            return repr(self.values[0])
        return "one of " + ", ".join(repr(v) for v in self.values)


_TYPE_WORDS = {bool: "true or false", str: "text", int: "a whole number", float: "a number"}


def _accepts(constraint, value) -> bool:
    if constraint is None:
        return value is None
    if constraint is bool:
        return isinstance(value, bool)
    if constraint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if constraint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(constraint, type):
        return isinstance(value, constraint)
    return constraint.accepts(value)


def _describe(constraint) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return _TYPE_WORDS.get(constraint, constraint.__name__)
    return str(constraint)


def _signature_defaults(cls) -> dict:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def constraints_of(cls) -> dict[str, list]:
    """Every constructor parameter's constraints: the declared ones, else the type of its default (a switch, a
    whole number, a number or text; a default of None or of another type admits anything: [])."""
    declared = getattr(cls, "parameter_constraints", {}) or {}
    out = {}
    for name, default in _signature_defaults(cls).items():
        if name in declared:
            given = declared[name]
            out[name] = list(given) if isinstance(given, (list, tuple)) else [given]
        elif isinstance(default, bool):
            out[name] = [bool]
        elif isinstance(default, numbers.Integral):
            out[name] = [int]
        elif isinstance(default, numbers.Real):
            out[name] = [float]
        elif isinstance(default, str):
            out[name] = [str]
        else:
            out[name] = []
    return out


def allowed_text(constraints: list) -> str:
    return " or ".join(_describe(c) for c in constraints) if constraints else "anything"


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def check_parameters(cls, params: dict) -> dict:
    """``params`` checked against the method's declaration: returns them with switches read (``--set
    st-net.tta=false`` arrives as the text 'false', which as a bool would be True); a name the constructor
    does not take, or a value its declaration does not admit, is an ``InputError`` of one line naming the
    method, the parameter, the value and what is allowed."""
    constraints = constraints_of(cls)
    unknown = sorted(set(params) - set(constraints))
    if unknown:
        raise InputError(f"method {cls.name!r} has no parameter(s) {unknown}; its parameters: "
                         f"{', '.join(constraints) or 'none'}")
    checked = {}
    for name, value in params.items():
        allowed = constraints[name]
        if bool in allowed and isinstance(value, (str, int)) and not isinstance(value, bool):
            text = str(value).strip().lower()
            value = text in _TRUE if text in _TRUE + _FALSE else value
        if allowed and not any(_accepts(c, value) for c in allowed):
            raise InputError(f"method {cls.name!r}: parameter {name}={value!r} is not allowed; allowed: "
                             f"{allowed_text(allowed)}")
        checked[name] = value
    return checked


def declaration_problems(cls) -> list[str]:
    """What is wrong with a method's declaration itself (for ``bench check`` and the built-in methods' test):
    a declared name the constructor does not take, a constraint that is none of the kinds above, or a default,
    profile value or published dataset setting the declaration does not admit."""
    declared = getattr(cls, "parameter_constraints", {}) or {}
    defaults = _signature_defaults(cls)
    problems = [f"parameter_constraints names {name!r}, which the constructor does not take"
                for name in declared if name not in defaults]
    for name, given in declared.items():
        for c in (given if isinstance(given, (list, tuple)) else [given]):
            if not (c is None or isinstance(c, (type, Interval, Options))):
                problems.append(f"parameter_constraints[{name!r}]: {c!r} is not a type, None, Interval or Options")
    if problems:
        return problems
    sources = {"default": {k: v for k, v in defaults.items() if v is not inspect.Parameter.empty}}
    sources.update({f"profile {p!r}": values for p, values in (getattr(cls, "profiles", {}) or {}).items()})
    sources.update({f"dataset_settings[{d!r}]": values
                    for d, values in (getattr(cls, "dataset_settings", {}) or {}).items()})
    for where, values in sources.items():
        for name, value in values.items():
            try:
                check_parameters(cls, {name: value})
            except InputError as exc:
                problems.append(f"{where}: {exc}")
    return problems


def describe_parameters(cls) -> list[str]:
    """One line per constructor parameter for ``bench list <method>``: its default, what the profiles set and
    what is allowed."""
    defaults = _signature_defaults(cls)
    profiles = getattr(cls, "profiles", {}) or {}
    lines = []
    for name, allowed in constraints_of(cls).items():
        default = defaults[name]
        set_by = ", ".join(f"{p} {values[name]!r}" for p, values in profiles.items() if name in values)
        lines.append(f"{name} = {'(required)' if default is inspect.Parameter.empty else repr(default)}"
                     f"{f' ({set_by})' if set_by else ''}: {allowed_text(allowed)}")
    return lines


# Constraints many methods share (read-only lists: ``constraints_of`` copies them).
COUNT = [Interval(int, 1, None)]  # epochs, batch sizes, widths, heads ...
POSITIVE = [Interval(float, 0, None, closed="neither")]  # learning rates, temperatures, µm
NON_NEGATIVE = [Interval(float, 0, None)]  # weight decay, loss weights
DROPOUT = [Interval(float, 0, 1, closed="left")]  # a probability that cannot be 1 (nothing would pass)
PROBABILITY = [Interval(float, 0, 1)]
SWITCH = [bool]
EPOCHS = [Interval(int, 0, None)]  # 0: the model as initialised (tests look at it)
WINDOW_PX = [Interval(int, 1, None), None]  # a crop of that many image pixels, or None: a window of window_um µm
ENCODER = [str, None]  # an image encoder name (bench.nn.encoders) or None: the method's own backbone
