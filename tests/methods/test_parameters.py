"""Declared hyper-parameters (bench.parameters): one declaration per method, checked the same way everywhere."""
from __future__ import annotations

import pytest

from bench.errors import InputError
from bench.method import Interval, Method, Options
from bench.parameters import check_parameters, constraints_of, declaration_problems, describe_parameters
from bench.registry import get_method_class, method_catalogue


def test_every_built_in_method_declares_every_parameter_and_its_values_fit():
    """Defaults, profile values and published dataset settings all pass the method's own declaration."""
    built_in = [name for name, info in method_catalogue().items() if "entry point" not in info.origin]
    assert {"mclstexp", "bleep", "thitogene", "triplex", "linear-probe", "mean"} <= set(built_in)
    for name in built_in:
        cls = get_method_class(name)
        assert set(cls.parameter_constraints) == set(cls.param_names()), name
        assert declaration_problems(cls) == [], name


@pytest.mark.parametrize("method, param, value, allowed", [
    ("mclstexp", "distance", "cosin", "one of 'l1', 'l2'"),  # was found only in predict, after training
    ("bleep", "weighting", "inverse-square", "one of 'uniform', 'exponential'"),  # was found only in fit
    ("bleep", "image_input", "bgr", "one of 'imagenet', 'raw-bgr'"),
    ("bleep", "devices", 0, "a whole number >= 1"),
    ("thitogene", "gat_softmax", "pyg", "one of 'published', 'neighbours'"),
    ("linear-probe", "protocol", "HEST", "one of 'suite', 'hest'"),
    ("st-net", "epochs", 2.5, "a whole number >= 0"),
    ("histogene", "dropout", 1.0, "a number in [0, 1)"),
    ("hist2st", "max_distance", "two", "a number > 0 or None"),
    ("st-net", "tta", "maybe", "true or false"),
])
def test_a_wrong_value_is_one_line_naming_method_parameter_value_and_what_is_allowed(method, param, value, allowed):
    with pytest.raises(InputError) as refused:
        check_parameters(get_method_class(method), {param: value})
    assert str(refused.value) == (f"method {method!r}: parameter {param}={value!r} is not allowed; "
                                  f"allowed: {allowed}")


def test_accepted_values_come_back_with_switches_read():
    cls = get_method_class("mclstexp")
    given = {"distance": "l2", "window_px": None, "window_um": "encoder", "lr": 1, "augment": "off", "bf16": 1}
    assert check_parameters(cls, given) == {**given, "augment": False, "bf16": True}
    with pytest.raises(InputError, match=r"has no parameter\(s\) \['distanse'\]"):
        check_parameters(cls, {"distanse": "l2"})


class _PlugIn(Method):
    """A plug-in that declares nothing: each parameter is checked against its default's type only."""

    name = "plug-in"

    def __init__(self, k: int = 3, alpha: float = 0.5, flag: bool = False, mode: str = "a", extra=None):
        self.k, self.alpha, self.flag, self.mode, self.extra = k, alpha, flag, mode, extra


def test_a_plug_in_that_declares_nothing_is_checked_by_the_type_of_each_default():
    assert constraints_of(_PlugIn) == {"k": [int], "alpha": [float], "flag": [bool], "mode": [str], "extra": []}
    assert check_parameters(_PlugIn, {"k": 5, "alpha": 2, "flag": "yes", "mode": "b", "extra": [1]}) == \
        {"k": 5, "alpha": 2, "flag": True, "mode": "b", "extra": [1]}
    for param, value in (("k", 2.5), ("k", True), ("alpha", "big"), ("mode", 3)):
        with pytest.raises(InputError, match=f"parameter {param}="):
            check_parameters(_PlugIn, {param: value})


def test_a_wrong_declaration_is_named_for_bench_check():
    class Wrong(_PlugIn):
        parameter_constraints = {"k": [Interval(int, 10, None)], "kk": [int], "mode": ["a"]}
        profiles = {"quick": {"alpha": -1}}

    problems = declaration_problems(Wrong)
    assert problems == ["parameter_constraints names 'kk', which the constructor does not take",
                        "parameter_constraints['mode']: 'a' is not a type, None, Interval or Options"]
    Wrong.parameter_constraints = {"k": [Interval(int, 10, None)], "alpha": [Interval(float, 0, 1)]}
    assert [p.split(":")[0] for p in declaration_problems(Wrong)] == ["default", "profile 'quick'"]


def test_intervals_and_options_say_what_they_admit():
    assert [Interval(int, 1, 5).accepts(v) for v in (0, 1, 5, 6, 2.0, True)] == [False, True, True, False, False, False]
    assert [Interval(float, 0, 1, "neither").accepts(v) for v in (0, 0.5, 1, 1e-9)] == [False, True, False, True]
    assert not Options("a", "b").accepts(1) and not Options(0, 1).accepts(True) and Options(0, 1).accepts(1)
    assert str(Interval(float, None, 0, "neither")) == "a number < 0"
    assert "distance = 'l1': one of 'l1', 'l2'" in describe_parameters(get_method_class("mclstexp"))
