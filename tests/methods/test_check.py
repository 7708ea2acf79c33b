"""`python -m bench check` and bench.testing.check_method: methods broken on purpose fail the matching check,
and an argument that names no method is bad input (one line, exit 2). The built-in methods pass the same
checks in tests/methods/test_methods.py."""
import re

import pytest

from bench.cli import main
from bench.testing import CHECKS, check_method

# The colour-ridge example of docs/add-a-method.md (tests/methods/test_extending.py checks that it passes every
# check); each broken variant below changes one thing, and fails that thing's check only.
GOOD = '''
import numpy as np
from sklearn.linear_model import Ridge
from bench.method import Method, PatchSpec


class ColourRidge(Method):
    name = "{name}"
    description = "ridge regression on the mean RGB colour of each patch"

    def __init__(self, alpha: float = 1.0, patch_px: int = 16):
        self.alpha = alpha
        self.patch_px = patch_px

    def patch_spec(self):
        return PatchSpec(px=self.patch_px)

    def fit(self, train):
        self.model_ = Ridge(alpha=self.alpha).fit(self._colour(train), train.expression)
        return self

    def predict(self, test):
        pred = self.model_.predict(self._colour(test))
        {predict_extra}
        return pred

    @staticmethod
    def _colour(data):
        return np.asarray(data.patches, dtype=np.float32).mean(axis=(1, 2)) / 255.0
'''
# Reads the held-out truth where it finds it (a harness bug or a careless refactoring would hand it over).
READS_TRUTH = "if test.expression is not None:\n            pred = 0.5 * pred + 0.5 * test.expression"
# Draws from a generator nobody seeded.
NONDETERMINISTIC = "pred = pred + np.random.default_rng().normal(0, 0.01, pred.shape)"
WRONG_SHAPE = "pred = pred[:, :-1]"
NOT_FINITE = "pred[0, 0] = np.inf"


def _write(tmp_path, name="colour-ridge", predict_extra="pass", source=None):
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(source if source is not None else GOOD.format(name=name, predict_extra=predict_extra))
    return path


def _status(results):
    return {r.check: r.status for r in results}


@pytest.mark.parametrize("extra, check, reason", [
    (READS_TRUTH, "test_truth", "reads the held-out truth"),
    (WRONG_SHAPE, "prediction", r"shape \(200, 39\)"),
    (NOT_FINITE, "prediction", "1 non-finite"),
])
def test_a_method_broken_on_purpose_fails_the_matching_check(tmp_path, synthetic, extra, check, reason):
    name = f"broken-{check.replace('_', '-')}"
    results = check_method(str(_write(tmp_path, name, extra)), dataset=synthetic, cache_dir=tmp_path / "cache",
                           checks=("prediction", "test_truth"))
    failed = {r.check: r.detail for r in results if r.failed}
    assert list(failed) == [check], "\n".join(map(str, results))
    assert re.search(reason, failed[check])


def test_randomness_drawn_in_fit_from_an_unseeded_generator_fails_determinism(tmp_path, synthetic):
    source = GOOD.format(name="unseeded", predict_extra="pred = pred + self.offset_").replace(
        "        return self\n",
        "        self.offset_ = np.random.default_rng().normal(0, 0.01, train.n_genes)\n        return self\n", 1)
    results = check_method(str(_write(tmp_path, "unseeded", source=source)), dataset=synthetic,
                           cache_dir=tmp_path / "cache", checks=("prediction", "test_truth", "determinism"))
    assert _status(results) == {"prediction": "pass", "test_truth": "pass", "determinism": "fail"}
    assert "predicted differently" in results[-1].detail


def test_randomness_in_predict_is_not_mistaken_for_reading_the_truth(tmp_path, synthetic):
    results = check_method(str(_write(tmp_path, "noisy", NONDETERMINISTIC)), dataset=synthetic,
                           cache_dir=tmp_path / "cache", checks=("test_truth", "determinism"))
    assert _status(results) == {"test_truth": "fail", "determinism": "fail"}
    assert "differ even with the truth withheld" in results[0].detail


@pytest.mark.parametrize("edit, check, reason", [
    # hyper-parameters only in the constructor, stored as given, nothing else computed there
    (("self.alpha = alpha\n", "self.alpha = alpha\n        self.scale = 2 * alpha\n"), "hyperparameters",
     "sets scale, which are not parameters"),
    (("self.alpha = alpha\n", "self.alpha = float(alpha) + 1\n"), "hyperparameters", "changes alpha"),
    (("alpha: float = 1.0,", "alpha: float,"), "hyperparameters", "alpha have no default"),
    (("def fit(self, train):", "def fit(self, train, alpha=1.0):"), "hyperparameters", "fit takes alpha"),
    # the declaration must admit the method's own defaults
    (('    name = "colour-ridge"\n', '    name = "colour-ridge"\n    parameter_constraints = {"alpha": [bool]}\n'),
     "hyperparameters", "parameter_constraints: default: method 'colour-ridge': parameter alpha=1.0 is not allowed"),
    (("def fit(self, train):\n", "def fit(self, train):\n        self.alpha = self.alpha / 2\n"), "hyperparameters",
     "fit changed hyper-parameter(s) alpha"),
    # `bench list` must read the listing without importing the file
    (('description = "ridge', 'description = "ridge" + " '), "listing", "cannot read class ColourRidge"),
    (('description = "ridge regression on the mean RGB colour of each patch"', 'description = ""'),
     "listing", "description is empty"),
    (('    name = "colour-ridge"\n', '    name = "colour-ridge"\n    kind = "oracle"\n'), "listing",
     "kind 'oracle' is none of"),
    (("return self\n", "return None\n"), "prediction", "end fit with return self"),
    (("        self.model_ = Ridge", "        raise ValueError('no colour')\n        self.model_ = Ridge"), "prediction",
     "fit raised ValueError: no colour (at "),
])
def test_a_contract_violation_fails_its_check_with_the_reason(tmp_path, synthetic, edit, check, reason):
    source = GOOD.format(name="colour-ridge", predict_extra="pass").replace(*edit, 1)
    assert source != GOOD.format(name="colour-ridge", predict_extra="pass")
    results = check_method(str(_write(tmp_path, source=source)), dataset=synthetic, cache_dir=tmp_path / "cache",
                           checks=("listing", "hyperparameters", "prediction"))
    failed = {r.check: r.detail for r in results if r.failed}
    assert check in failed and reason in failed[check], "\n".join(map(str, results))
    if "raised" in reason:  # the line of the method file that raised
        assert failed[check].endswith(f"colour_ridge.py:{source.splitlines().index(edit[1].splitlines()[0]) + 1})")


def test_a_method_without_a_constructor_of_its_own_has_no_hyperparameters(tmp_path, synthetic):
    """object.__init__ takes *args; a method that defines no __init__ is not blamed for it."""
    source = (GOOD.format(name="colour-ridge", predict_extra="pass")
              .replace("    def __init__(self, alpha: float = 1.0, patch_px: int = 16):\n"
                       "        self.alpha = alpha\n        self.patch_px = patch_px\n\n", "")
              .replace("self.patch_px", "16").replace("self.alpha", "1.0"))
    assert "__init__" not in source
    results = check_method(str(_write(tmp_path, source=source)), dataset=synthetic, cache_dir=tmp_path / "cache",
                           checks=("hyperparameters",))
    assert _status(results) == {"hyperparameters": "pass"}, "\n".join(map(str, results))
    assert results[0].detail.startswith("no constructor parameters")


def test_bench_check_prints_one_line_per_check_and_exits_1_on_a_failure(tmp_path, capsys):
    assert main(["check", str(_write(tmp_path, "peeks", READS_TRUTH))]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("checking peeks (") and lines[-1].startswith("1 check(s) failed")
    body = lines[1:-1]
    assert [line.split()[1] for line in body] == list(CHECKS)
    assert [line.split()[0] for line in body] == ["PASS", "PASS", "PASS", "FAIL", "PASS", "PASS"]


@pytest.mark.parametrize("source, message", [
    ("import numpy as np\n\ndef helper():\n    return 1\n", "holds no method"),
    ("import no_such_package_for_stbench\n", "fails to import: ModuleNotFoundError: No module named"),
    ("from bench.method import Method\nclass Nameless(Method):\n    description = 'x'\n", "class Nameless has no `name`"),
    ("def broken(:\n", "fails to import: SyntaxError"),
])
def test_a_file_with_no_checkable_method_is_bad_input(tmp_path, capsys, source, message):
    path = tmp_path / "my_method.py"
    path.write_text(source)
    assert main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"error: {path}: ") and message in captured.err


def test_an_unknown_name_or_missing_file_is_bad_input(tmp_path, capsys):
    assert main(["check", "no-such-method"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no-such-method' is not a method file" in err and "st-net" in err
    assert main(["check", str(tmp_path / "missing.py")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.py'}: no such file\n"
