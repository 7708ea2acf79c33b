"""Bad input and untrusted files: one clear error, nothing half-written, nothing unsafe.

Every case builds a her2st folder from the real data (../shared/data) in a temporary directory, breaks
one thing, runs ``bench.cli.main`` in-process and checks: one ``error:`` line naming the file (and line,
gene or field), no traceback, a non-zero exit, and nothing a later run could take for a result (no job
folder with COMPLETE, no temporary leftovers, no patch-store entry, no MLflow run marked FINISHED).

The folder is cheap to build: every file is a symlink to the shared copy, except the six imaged
sections' spot files (copied) and count files (written with their first ``N_GENES`` genes and every
spot), which keeps a run to about a second. A case replaces a file before breaking it, never writing
through a symlink. Data-derived strings in the report are escaped: see ``test_report.py``
(``test_gene_names_are_escaped``). Unknown method, dataset and protocol names: ``test_cli.py``.
"""
from __future__ import annotations

import ast
import errno
import gzip
import json
import logging
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import HER2ST, REPO, needs_her2st

import bench.data.patches
from bench.cli import main
from bench.data.dataset import DataError
from bench.registry import clear_caches, get_dataset_module

IMAGED = ["B4", "C2", "C3", "C4", "C5", "C6"]
N_GENES = 40


# --- building the data ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slim_counts() -> dict[str, bytes]:
    """Each imaged section's count file cut to its first N_GENES genes (gzip), every spot kept."""
    out = {}
    for sid in IMAGED:
        with gzip.open(HER2ST / "data" / "ST-cnts" / f"{sid}.tsv.gz", "rt") as fh:
            rows = [line.rstrip("\n").split("\t", N_GENES + 1)[: N_GENES + 1] for line in fh]  # name + genes
        text = "\n".join("\t".join(row) for row in rows) + "\n"
        out[sid] = gzip.compress(text.encode(), compresslevel=1)
    return out


@pytest.fixture
def data_dir(tmp_path, slim_counts) -> Path:
    """``<tmp>/data`` holding her2st/ in the repository's layout (see the module docstring)."""
    from bench.data.download import read_manifest

    root = tmp_path / "data" / "her2st"
    for entry in read_manifest(get_dataset_module("her2st").MANIFEST):
        rel = entry.path
        if not (HER2ST / rel).is_file():  # an image this copy lacks: the data folder lacks it too
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        sid = Path(rel).name.split(".")[0].split("_")[0]
        if rel.startswith("data/ST-cnts/") and sid in IMAGED:
            dest.write_bytes(slim_counts[sid])
        elif rel.startswith("data/ST-spotfiles/") and sid in IMAGED:
            shutil.copyfile(HER2ST / rel, dest)
        else:
            dest.symlink_to(HER2ST / rel)
    return tmp_path / "data"


def _root(data_dir: Path) -> Path:
    return data_dir / "her2st"


def _counts(data_dir: Path, sid: str) -> Path:
    return _root(data_dir) / "data" / "ST-cnts" / f"{sid}.tsv.gz"


def _spots(data_dir: Path, sid: str) -> Path:
    return _root(data_dir) / "data" / "ST-spotfiles" / f"{sid}_selection.tsv"


def _image(data_dir: Path, sid: str) -> Path:
    [path] = (_root(data_dir) / "data" / "ST-imgs" / sid[0] / sid).glob("*.jpg")
    return path


def _replace(path: Path, data: bytes) -> None:
    """Write a file in place of a symlink or copy (never through a symlink into the shared data)."""
    path.unlink()
    path.write_bytes(data)


def _edit_table(path: Path, edit) -> None:
    """Apply ``edit`` to the file's rows (lists of tab-separated cells, header first) and write it back."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh]
    rows = edit(rows)
    text = "\n".join("\t".join(row) for row in rows) + "\n"
    _replace(path, gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())


def _set_cell(line: int, column: int, value: str):
    """An edit setting one cell; ``line`` counts the header as 1, ``column`` the row names as 1."""
    def edit(rows):
        rows[line - 1][column - 1] = value
        return rows
    return edit


def _gene(data_dir: Path, sid: str, column: int) -> str:
    """The gene name of a column (row names are column 1)."""
    with gzip.open(_counts(data_dir, sid), "rt") as fh:
        return fh.readline().rstrip("\n").split("\t")[column - 1]  # the header has an empty row-name cell


def _spot(data_dir: Path, sid: str, line: int) -> str:
    with gzip.open(_counts(data_dir, sid), "rt") as fh:
        return fh.read().splitlines()[line - 1].split("\t")[0]


def _jpeg(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "JPEG")
    return buffer.getvalue()


# --- running and checking ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for every case (each in its own experiment): a new store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


class Case:
    def __init__(self, tmp_path: Path, data_dir: Path, tracking_uri: str):
        self.out = tmp_path / "out"
        self.cache = tmp_path / "cache"
        self.data_dir = data_dir
        self.tracking_uri = tracking_uri
        self.experiment = f"bad-input-{tmp_path.name}"

    def argv(self, methods: str = "mean", *extra: str) -> list[str]:
        return ["run", "--methods", methods, "--data-dir", str(self.data_dir), "--out", str(self.out),
                "--cache-dir", str(self.cache), "--panel", "top-mean:5", "--folds", "0", "--no-fetch",
                "--no-progress", "--device", "cpu", "--profile", "quick", "--pretrained", "no",
                "--tracking-uri", self.tracking_uri, "--experiment", self.experiment, *extra]

    def run_statuses(self) -> list[str]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return []
        return [r.info.status for r in client.search_runs([experiment.experiment_id])]

    def assert_nothing_left(self) -> None:
        """Nothing a later run could take for a result, and no run that claims to have finished."""
        assert not list(self.out.rglob("COMPLETE")), "a job folder was recorded complete"
        assert not [p for p in self.out.rglob("*") if ".tmp" in p.name], "temporary leftovers"
        assert not (self.out / "jobs").exists() or not list((self.out / "jobs").rglob("*.npz"))
        assert not list(self.cache.rglob("*.npy")), "a patch-store entry was written"
        assert not (self.out / "results").exists(), "result tables were written"
        assert set(self.run_statuses()) <= {"FAILED"}, self.run_statuses()


@pytest.fixture
def case(tmp_path, data_dir, tracking_uri) -> Case:
    return Case(tmp_path, data_dir, tracking_uri)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


PLUGINS = textwrap.dedent('''
    import numpy as np
    from bench.method import Method
    from bench.data.patches import PatchSpec

    class PatchMean(Method):
        name = "patch-mean"
        description = "asks for small patches, predicts the training mean"
        def __init__(self):
            pass
        def patch_spec(self):
            return PatchSpec(px=8)
        def fit(self, train):
            self.mean_ = train.expression.mean(axis=0)
            return self
        def predict(self, test):
            return np.tile(self.mean_, (len(test), 1))

    class WrongShape(Method):
        name = "wrong-shape"
        description = "one gene too many"
        def __init__(self):
            pass
        def fit(self, train):
            return self
        def predict(self, test):
            return np.zeros((len(test), test.n_genes + 1))

    class InfPredictor(Method):
        name = "inf-predictor"
        description = "one infinite value"
        def __init__(self):
            pass
        def fit(self, train):
            return self
        def predict(self, test):
            out = np.zeros((len(test), test.n_genes))
            out[3, 1] = np.inf
            return out
''')


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "bad_input_plugins.py").write_text(PLUGINS)
    monkeypatch.setenv("STBENCH_METHODS_PATH", str(folder))
    clear_caches()
    yield
    clear_caches()


# --- 1-6: data refused before anything is written ------------------------------------------------

def _no_data_dir(d):
    shutil.rmtree(d)
    return [str(d / "her2st")]


def _missing(path_of, what):
    def breaker(d):
        path = path_of(d)
        path.unlink()
        return [str(path), what]
    return breaker


def _garbage_image(d):
    _replace(_image(d, "C2"), b"this is not a JPEG")
    return [str(_image(d, "C2")), "not a readable image"]


def _small_image(d):
    _replace(_image(d, "C2"), _jpeg(400, 300))
    return [str(_image(d, "C2")), "pixel_x/pixel_y", "outside the 400x300 image", "section C2"]


def _corrupt_counts(d):
    path = _counts(d, "B4")
    _replace(path, path.read_bytes()[:200])
    return [str(path), "cannot be read"]


def _duplicate_spot(d):
    spot = _spot(d, "B4", 3)
    _edit_table(_counts(d, "B4"), lambda rows: rows + [rows[2]])
    return [str(_counts(d, "B4")), f"spot {spot} appears on lines 3 and "]


def _duplicate_spot_row(d):
    _edit_table(_spots(d, "C5"), lambda rows: rows[:4] + [rows[2]] + rows[4:])  # line 3 again as line 5
    x, y = _spots(d, "C5").read_text().splitlines()[2].split("\t")[:2]
    return [str(_spots(d, "C5")), f"lines 3 and 5 are both spot x, y = {x}, {y}"]


def _duplicate_gene(d):
    gene = _gene(d, "B4", 2)
    _edit_table(_counts(d, "B4"), _set_cell(1, 3, gene))
    return [str(_counts(d, "B4")), f"gene {gene!r} names columns 2 and 3"]


def _bad_cell(value, what):
    def breaker(d):
        gene, spot = _gene(d, "C3", 4), _spot(d, "C3", 5)
        _edit_table(_counts(d, "C3"), _set_cell(5, 4, value))
        return [str(_counts(d, "C3")), f"line 5, gene {gene} (spot {spot})", what]
    return breaker


def _spot_without_position(d):
    spot = _spot(d, "B4", 2)
    x, y = spot.split("x")
    _edit_table(_spots(d, "B4"), lambda rows: [r for r in rows if r[:2] != [x, y]])
    return [str(_counts(d, "B4")), str(_spots(d, "B4")), "1 of ", f"(first: {spot})"]


def _no_spots(d):
    _edit_table(_counts(d, "B4"), lambda rows: rows[:1])
    return [str(_counts(d, "B4")), "no spots"]


def _bad_pixel(d):
    def edit(rows):
        rows[3][rows[0].index("pixel_x")] = "abc"
        return rows

    _edit_table(_spots(d, "C4"), edit)
    return [str(_spots(d, "C4")), "line 4, column pixel_x", "'abc' is not a number"]


BEFORE_ANY_WRITE = {
    "missing-data-dir": _no_data_dir,
    "missing-counts": _missing(lambda d: _counts(d, "B4"), "file not found"),
    "missing-spot-file": _missing(lambda d: _spots(d, "C3"), "file not found"),
    # A missing image is no error: a partial copy runs on the sections that have one and says which lack it
    # (issue 17; tests/cli/test_cli.py checks the note).
    "corrupt-counts-gzip": _corrupt_counts,
    "garbage-image": _garbage_image,
    "image-smaller-than-spots": _small_image,
    "duplicate-spot-id": _duplicate_spot,
    "duplicate-gene-name": _duplicate_gene,
    "duplicate-spot-in-spot-file": _duplicate_spot_row,
    "non-numeric-count": _bad_cell("abc", "'abc' is not a number"),
    "negative-count": _bad_cell("-4", "is negative"),
    "nan-count": _bad_cell("NaN", "is empty or not a finite number"),
    "empty-count-cell": _bad_cell("", "is empty or not a finite number"),
    "counted-spot-missing-from-spot-file": _spot_without_position,
    "zero-spots": _no_spots,
    "non-numeric-pixel-coordinate": _bad_pixel,
}


@pytest.mark.integration
@needs_her2st
@pytest.mark.parametrize("breaker", BEFORE_ANY_WRITE.values(), ids=BEFORE_ANY_WRITE.keys())
def test_bad_data_is_refused_before_anything_is_written(breaker, case, capsys):
    expected = breaker(case.data_dir)
    assert main(case.argv()) == 2
    line = _error_line(capsys)
    for text in expected:
        assert text in line, (text, line)
    assert not case.out.exists(), "the run wrote something before refusing the data"
    assert case.run_statuses() == []


@pytest.mark.integration
@needs_her2st
def test_spots_without_counts_are_joined_and_counted(data_dir, caplog):
    """The reverse of a counted spot without a position is allowed: left out, logged and counted."""
    from bench.data.locations import load_dataset

    before = load_dataset("her2st", data_dir)["B4"].counts
    spot = _spot(data_dir, "B4", 2)
    _edit_table(_counts(data_dir, "B4"), lambda rows: rows[:1] + rows[2:])
    with caplog.at_level(logging.INFO):
        after = load_dataset("her2st", data_dir)["B4"].counts
    assert after.n_obs == before.n_obs - 1 and spot not in after.obs_names
    assert after.uns["n_spots_without_counts"] == before.uns["n_spots_without_counts"] + 1
    n = after.uns["n_spots_without_counts"]
    assert f"section B4: {n} spot(s) of B4_selection.tsv have no counts row" in caplog.text


# --- 2: an image that breaks only when decoded; 10: a cache or output that cannot be written ------

@pytest.mark.integration
@needs_her2st
def test_truncated_image_stops_the_run(case, plugins, capsys):
    path = _image(case.data_dir, "C2")  # C2 is the first training section of fold 0: cut first
    _replace(path, path.read_bytes()[: path.stat().st_size // 2])
    assert main(case.argv("patch-mean")) == 2
    line = _error_line(capsys)
    assert str(path) in line and "corrupt or truncated" in line
    case.assert_nothing_left()
    # The image check before the run decodes a reduced copy (JPEG draft mode), which reads the whole file:
    # the truncation stops the run before any MLflow store or job exists.
    assert case.run_statuses() == []
    assert not (case.out / "mlflow.db").exists()


@pytest.mark.integration
@needs_her2st
def test_disk_full_while_writing_a_job_stops_the_run(case, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez_compressed", full)
    assert main(case.argv()) == 2
    line = _error_line(capsys)
    folder = case.out / "jobs" / "her2st" / "lopo_top-mean5_per-spot" / "mean" / "seed0" / "fold0"
    assert f"cannot write {folder / 'predictions.npz'}: {os.strerror(errno.ENOSPC)}" in line
    assert "free some space or choose another --out folder" in line
    assert not folder.exists()
    case.assert_nothing_left()
    assert case.run_statuses() == ["FAILED", "FAILED"]


@pytest.mark.integration
@needs_her2st
def test_disk_full_while_caching_patches_stops_the_run(case, plugins, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bench.data.patches, "_save_rows", full)  # where the store writes a block of patches
    assert main(case.argv("patch-mean")) == 2
    line = _error_line(capsys)
    assert f"cannot write {case.cache}" in line and ".npy" in line and "--cache-dir" in line
    case.assert_nothing_left()
    assert not [p for p in case.cache.rglob("*") if p.is_file()], "half-written cache files"


@pytest.mark.integration
@needs_her2st
def test_read_only_output_folder(case, capsys, monkeypatch):
    case.out.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes to read-only folders: refuse it here
        write_text = Path.write_text

        def refuse(path, *args, **kwargs):
            if case.out in path.parents:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return write_text(path, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", refuse)
    case.out.chmod(0o555)
    try:
        assert main(case.argv()) == 2
    finally:
        case.out.chmod(0o755)
    line = _error_line(capsys)
    assert f"cannot write {case.out / 'config.json'}: {os.strerror(errno.EACCES)}" in line
    assert "free some space" not in line and "choose another --out folder" in line
    assert list(case.out.iterdir()) == []


# --- 5: a gene panel naming genes a section lacks ------------------------------------------------

@pytest.mark.integration
@needs_her2st
def test_panel_with_unknown_genes(case, capsys, tmp_path):
    panel = tmp_path / "panel.txt"
    known = [_gene(case.data_dir, "B4", c) for c in (2, 3)]
    panel.write_text("\n".join(known + [f"NOT_A_GENE_{i}" for i in range(12)]) + "\n")
    assert main([*case.argv(), "--panel", f"file:{panel}"]) == 2
    line = _error_line(capsys)
    assert str(panel) in line and "NOT_A_GENE_0" in line and "..." in line  # the first few, not all 12
    assert "NOT_A_GENE_11" not in line and "12 of the panel's 14 genes: " in line
    case.assert_nothing_left()
    assert case.run_statuses() == []


# --- 6, 7: split files -----------------------------------------------------------------------------

def _made_split(case: Case) -> Path:
    from bench.data.splits import load_or_create_split

    patient_of = {sid: sid[0] for sid in IMAGED}
    return load_or_create_split(case.out / "splits", "her2st", "lopo", 0, patient_of).path


def _edit_folds(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit({f["index"]: f for f in doc["folds"]})
    path.write_text(json.dumps(doc, indent=1))


def _leak(folds):
    folds[1]["test"].remove("C2")
    folds[1]["train"].append("C2")


def _edit_after_made(folds):
    folds[1]["test"].remove("C6")  # no leak, no empty side: only the recorded hash can tell


def _empty_training_side(folds):
    folds[0]["train"] = []


SPLIT_EDITS = {
    "patient-on-both-sides": (_leak, ["puts a patient's sections on both sides", "fold 1: patient(s) C"]),
    "hash-no-longer-matches": (_edit_after_made, ["edited after it was made", "content_sha256"]),
    "empty-training-side": (_empty_training_side, ["fold 0 has no training sections"]),
}


@pytest.mark.integration
@needs_her2st
@pytest.mark.parametrize("edit, expected", SPLIT_EDITS.values(), ids=SPLIT_EDITS.keys())
def test_edited_split_file_is_refused(edit, expected, case, capsys):
    path = _made_split(case)
    _edit_folds(path, edit)
    assert main(case.argv()) == 2
    line = _error_line(capsys)
    assert str(path) in line
    for text in expected:
        assert text in line, (text, line)
    case.assert_nothing_left()
    assert case.run_statuses() == []


# --- 8: names -------------------------------------------------------------------------------------

@pytest.mark.integration
@needs_her2st
def test_unknown_fold_index(case, capsys):
    assert main([*case.argv(), "--folds", "7"]) == 2
    line = _error_line(capsys)
    assert "no fold(s) [7]" in line and "has folds 0, 1" in line
    case.assert_nothing_left()


def test_unknown_profile_lists_the_valid_ones(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--methods", "mean", "--profile", "fast", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fast'" in err and all(p in err for p in ("auto", "paper", "quick"))
    from bench.run.config import BenchConfig

    with pytest.raises(ValueError, match="unknown profile 'fast'; valid profiles: auto, paper, quick"):
        BenchConfig(methods=["mean"], dataset="synthetic", profile="fast", out=str(tmp_path)).resolved()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["run", "--methods", "mean", "--dataset", "synthetic", "--panel", "best:10"],
     ["gene panel 'best:10' not understood", "hvg:<n>, top-mean:<n>, file:<path> or published"]),
    (["data", "info", "nope"], ["unknown dataset 'nope'", "her2st", "synthetic"]),
], ids=["panel-kind", "dataset-in-data-info"])
def test_unknown_names_elsewhere(argv, expected, capsys, tmp_path):
    assert main([*argv, "--data-dir", str(tmp_path)]) == 2
    line = _error_line(capsys)
    for text in expected:
        assert text in line


# --- 9: a method's predictions --------------------------------------------------------------------

@pytest.mark.integration
@needs_her2st
@pytest.mark.parametrize("method, expected", [
    ("wrong-shape", "returned shape (283, 6); expected (283 spots, 5 genes)"),
    ("inf-predictor", "returned 1 non-finite values"),
])
def test_invalid_predictions_fail_their_job(method, expected, case, plugins, capsys):
    assert main(case.argv(method)) == 1  # a method's failure fails its jobs, not the run
    err = capsys.readouterr().err
    assert "Traceback" not in err
    job = f"her2st/lopo_top-mean5_per-spot/{method}/seed0/fold0"
    [line] = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert f"FAILED {job}: InvalidPredictionError: method '{method}' (job {job}) {expected}" in line
    assert not list(case.out.rglob("COMPLETE")) and not list((case.out / "jobs").rglob("*.npz"))
    assert sorted(case.run_statuses()) == ["FAILED", "FAILED"]


# --- the command line: --debug, unexpected errors --------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    argv = ["run", "--methods", "mean", "--data-dir", str(tmp_path / "nowhere"), "--no-fetch",
            "--out", str(tmp_path / "out"), "--no-progress"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(DataError, match="no her2st data"):
        main(argv)


@pytest.mark.parametrize("error", [TypeError, ValueError, RuntimeError, KeyError])
def test_unexpected_error_is_one_line_pointing_to_debug(error, monkeypatch, capsys):
    """A ValueError or RuntimeError from inside the suite is a bug, not the user's mistake: exit 1."""
    import bench.cli

    def broken(args):
        raise error("planted bug")

    monkeypatch.setattr(bench.cli, "cmd_list", broken)
    assert main(["list"]) == 1
    line = _error_line(capsys)
    assert f"unexpected {error.__name__}: " in line and "planted bug" in line and "--debug" in line


def test_bad_input_types_exit_2(monkeypatch, capsys):
    import bench.cli
    from bench.errors import InputError

    def bad(args):
        raise InputError("--thing: not a thing")

    monkeypatch.setattr(bench.cli, "cmd_list", bad)
    assert main(["list"]) == 2
    assert _error_line(capsys) == "error: --thing: not a thing"


# --- 11, 12: untrusted files, the UI's address ----------------------------------------------------

UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("joblib", "load"), ("dill", "load"),
              ("cloudpickle", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def _unsafe_loads(source: str) -> list[str]:
    """Calls that could unpickle a file, found by walking the syntax tree (comments and strings never match)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        call = (name, node.func.attr)
        given = {k.arg: k.value.value if isinstance(k.value, ast.Constant) else "?" for k in node.keywords}
        where = f"line {node.lineno}: {name}.{node.func.attr}("
        if call == ("torch", "load") and given.get("weights_only") is not True:
            found.append(where + "...) without weights_only=True")
        elif call in (("np", "load"), ("numpy", "load")) and given.get("allow_pickle", False) is not False:
            found.append(where + "allow_pickle=...)")
        elif call in UNPICKLERS:
            found.append(where + "...)")
    return found


def test_no_code_unpickles_files():
    """Every torch.load passes weights_only=True; nothing calls pickle/joblib loaders or np.load with
    allow_pickle (its default, False, is what the patch store and the evaluation rely on)."""
    assert _unsafe_loads("import torch\ntorch.load(p)\n") and _unsafe_loads("np.load(p, allow_pickle=True)")
    assert not _unsafe_loads("torch.load(p, weights_only=True)\nnp.load(p, mmap_mode='r')")
    files = [p for folder in ("bench", "methods", "datasets") for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 30
    problems = [f"{p.relative_to(REPO)} {hit}" for p in files for hit in _unsafe_loads(p.read_text())]
    assert problems == []


@pytest.mark.parametrize("extra, host", [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_ui_binds_to_localhost_unless_told_otherwise(extra, host, tmp_path, monkeypatch, caplog):
    import bench.run.ui_server

    (tmp_path / "mlflow.db").write_bytes(b"")
    calls = []
    monkeypatch.setattr(bench.run.ui_server, "run_until_stopped", lambda cmd: calls.append(cmd) or 0)
    with caplog.at_level(logging.WARNING):
        assert main(["ui", "--out", str(tmp_path), *extra]) == 0
    [cmd] = calls
    assert cmd[cmd.index("--host") + 1] == host
    assert ("reachable from other machines" in caplog.text) == (host != "127.0.0.1")
