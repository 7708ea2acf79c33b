"""A new user's own data, as files in a temporary folder: the loader options reachable from the command line
(``--data-option``), the patients found and said, wrong data refused with one line and exit 2, and nothing
written before a run is known to be able to start.

The files are tiny Visium-like .h5ad sections made here (a hexagonal grid, a textured "tissue" image with
glass around it, two labelled domains with a planted expression difference), each its own file."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import visium_lattice

from bench.cli import main

README = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"  # its "Your own data" section
UM_PER_PX = 2.0  # full-resolution pixels
HIRES = 0.5  # tissue_hires_scalef: the stored image is half the full resolution
MARGIN_PX = 700  # glass around the tissue, full-resolution pixels
N_GENES = 30


def write_section(path: Path, *, patient: str | None = "P1", seed: int = 0, labels: bool = True,
                  counts: str = "X", spatial_scale: float = 1.0, spot_diameter: bool = True,
                  image_scale: float = HIRES, repeat_name: bool = False, n_rows: int = 10, n_cols: int = 20):
    """One Visium-like section. ``counts="lognorm"`` puts log-normalised values in X and the counts in
    layers['counts']; ``spatial_scale`` multiplies obsm['spatial'] (HIRES: positions in hires pixels);
    ``image_scale`` is the stored image's true scale, whatever tissue_hires_scalef says."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    array_row, array_col, um = visium_lattice(n_rows, n_cols)
    full_px = um / UM_PER_PX + MARGIN_PX + rng.normal(0, 2.0, um.shape)
    tumour = array_col < n_cols // 2
    rate = np.full((len(um), N_GENES), 3.0)
    rate[tumour, :5] = 12.0  # planted: five genes mark the tumour domain
    X = rng.poisson(rate).astype(np.float32)
    names = [f"spot{i}" for i in range(len(um))]
    if repeat_name:
        names[1] = names[0]
    obs = pd.DataFrame({"array_row": array_row, "array_col": array_col}, index=names)
    if patient is not None:
        obs["patient"] = patient
    if labels:
        obs["annotation"] = np.where(tumour, "tumour", "stroma")
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)]))
    if counts == "lognorm":
        a.layers["counts"] = X.copy()
        a.X = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    a.obsm["spatial"] = full_px * spatial_scale
    width, height = (full_px.max(axis=0) + MARGIN_PX) * image_scale
    image = np.full((int(height), int(width), 3), 242, dtype=np.uint8)  # glass
    lo = ((full_px.min(axis=0) - 60) * image_scale).astype(int)
    hi = ((full_px.max(axis=0) + 60) * image_scale).astype(int)
    shape = (hi[1] - lo[1], hi[0] - lo[0], 3)
    image[lo[1]:hi[1], lo[0]:hi[0]] = rng.normal([190, 120, 170], 30, shape).clip(0, 255).astype(np.uint8)
    factors = {"tissue_hires_scalef": HIRES}
    if spot_diameter:
        factors["spot_diameter_fullres"] = 55.0 / UM_PER_PX
    a.uns["spatial"] = {path.stem: {"images": {"hires": image}, "scalefactors": factors}}
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def two_patients(folder: Path, **kwargs) -> Path:
    """Four sections, two per patient, as the example of docs/datasets.md: my_data/h5ad/P1_a.h5ad ..."""
    for i, name in enumerate(["P1_a", "P1_b", "P2_a", "P2_b"]):
        write_section(folder / f"{name}.h5ad", patient=name[:2], seed=i, **kwargs)
    return folder


def readme_commands() -> list[list[str]]:
    """The `python -m bench` commands of the "Your own data" example (docs/datasets.md) (continuation lines joined)."""
    text = README.read_text()
    section = text[text.index("## Your own data"):]
    section = section[:section.index("\n## ", 5)]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line.split("#")[0])[3:] for line in block.splitlines() if line.startswith("python -m bench")]


def refused(capsys, argv, *fragments):
    """``bench`` exits 2 with one error line holding every fragment, and prints nothing else on stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert captured.out == ""
    return lines[0]


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STBENCH_DATA", raising=False)


@pytest.mark.slow
def test_readme_two_patient_lopo_run_with_labels(tmp_path, cache, capsys):
    """The documented commands, on four files of two patients: the patient column is found by its name, lopo
    makes two folds that do not leak, the labels are read (ARI), and the options are recorded."""
    import json

    data = tmp_path / "my_data"
    two_patients(data / "h5ad")
    info, run = readme_commands()
    swap = lambda argv: [a.replace("my_data", str(data)).replace("runs/", f"{tmp_path}/runs/") for a in argv]  # noqa: E731
    assert main(swap(info)) == 0
    out = capsys.readouterr().out
    assert "4 sections from 2 patients" in out
    assert "Patients: obs column 'patient' (found by its name" in out
    assert "labels: pathology" in out and "µm/px" in out
    fast = ["--set", "linear-probe.patch_px=32", "--set", "linear-probe.encoder=resnet18", "--panel", "top-mean:20",
            "--no-progress", "--pretrained", "no"]
    assert main(swap(run) + fast) == 0
    capsys.readouterr()
    out_dir = Path(swap([run[run.index("--out") + 1]])[0])
    summary = pd.read_csv(out_dir / "results" / "summary.csv").set_index("method")
    assert summary.loc["linear-probe", "n_jobs"] == 2  # one fold per patient
    assert np.isfinite(summary.loc["linear-probe", "ari"])  # the labels were read
    result = json.loads(next((out_dir / "jobs").rglob("result.json")).read_text())
    assert result["split_leaks_patients"] is False
    assert result["patients_from"].startswith("obs column 'patient'")
    assert result["data_options"] == {"pathology_key": "annotation"}
    assert "Patients and data options" in (out_dir / "report.html").read_text()
    split = json.loads(next((out_dir / "splits").glob("*.json")).read_text())
    assert split["patients"] == {"P1_a": "P1", "P1_b": "P1", "P2_a": "P2", "P2_b": "P2"}


def test_patients_named_said_or_refused(tmp_path, cache, capsys, caplog):
    """No patient column: each file is its own patient, and data info and the run's first lines say so."""
    from bench.run.config import BenchConfig
    from bench.run.runner import prepare_run

    folder = tmp_path / "data" / "h5ad"
    for i, name in enumerate(["a", "b"]):
        write_section(folder / f"{name}.h5ad", patient=None, seed=i)
    assert main(["data", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 sections from 2 patients" in out and "each section is its own patient" in out
    assert "patient_key=<column>" in out
    config = BenchConfig(methods=["mean"], dataset="h5ad", data_dir=str(tmp_path / "data"),
                         out=str(tmp_path / "runs"), panel="top-mean:10").resolved()
    prepare_run(config)
    assert "each section is its own patient" in caplog.text and "patient_key=<column>" in caplog.text
    assert nothing_written(tmp_path / "runs")
    # patient_key=none: the column is there but the user says it is not the patient.
    two_patients(tmp_path / "two")
    assert main(["data", "info", str(tmp_path / "two"), "--data-option", "patient_key=none"]) == 0
    assert "4 sections from 4 patients" in capsys.readouterr().out
    # A file holding two patients' spots in the column found by name: refused, naming the way out.
    import anndata as ad

    both = ad.concat([ad.read_h5ad(tmp_path / "two" / "P1_a.h5ad"), ad.read_h5ad(tmp_path / "two" / "P2_a.h5ad")],
                     index_unique="-", uns_merge="first")
    both.write_h5ad(tmp_path / "both.h5ad")
    refused(capsys, ["data", "info", str(tmp_path / "both.h5ad")], "both.h5ad", "2 patients", "'patient'",
            "section_key=")


def test_unknown_or_malformed_data_option_is_refused(tmp_path, cache, capsys):
    folder = two_patients(tmp_path / "data" / "h5ad")
    refused(capsys, ["data", "info", str(folder), "--data-option", "patinet_key=donor"],
            "unknown data option 'patinet_key'", "valid options: section_key, patient_key")
    refused(capsys, ["data", "info", str(folder), "--data-option", "spot_pitch_um=wide"], "spot_pitch_um", "float")
    refused(capsys, ["run", "--methods", "mean", "--dataset", "her2st", "--data-option", "patient_key=x",
                     "--out", str(tmp_path / "runs"), "--no-fetch"], "her2st", "takes no options")
    assert nothing_written(tmp_path / "runs")


def test_label_column_may_be_missing_from_some_files_not_all(tmp_path, cache, capsys):
    folder = tmp_path / "h5ad"
    write_section(folder / "a.h5ad", patient="P1", labels=True)
    write_section(folder / "b.h5ad", patient="P2", labels=False, seed=1)
    assert main(["data", "info", str(folder), "--data-option", "pathology_key=annotation"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"a .*labels: pathology", out) and re.search(r"b .*labels: none", out)
    refused(capsys, ["data", "info", str(folder), "--data-option", "pathology_key=anotation"],
            "no column 'anotation'", "nor does any other file")


BAD_FILES = {
    # name: (write_section arguments, fragments of the one error line)
    "log-normalised X": (dict(counts="lognorm"), ["X (read as the raw counts of section", "not whole numbers",
                                                  "counts_layer=<name>", "layers: counts"]),
    "positions in hires pixels": (dict(spatial_scale=HIRES), ["P1_a.h5ad", "not in the image's pixels",
                                                              "spot_diameter_fullres"]),
    "hires positions, no spot diameter": (dict(spatial_scale=HIRES, spot_diameter=False),
                                          ["fall on blank", "spot positions do not match"]),
    "repeated spot names": (dict(repeat_name=True), ["P1_a.h5ad", "spot name 'spot0' appears more than once"]),
    "lowres image as hires": (dict(image_scale=HIRES / 4), ["outside the", "image does not match"]),
}


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_wrong_data_is_refused_by_data_info_and_run_before_anything_is_written(case, tmp_path, cache, capsys):
    kwargs, fragments = BAD_FILES[case]
    folder = tmp_path / "data" / "h5ad"
    write_section(folder / "P1_a.h5ad", patient="P1", **kwargs)
    write_section(folder / "P2_a.h5ad", patient="P2", seed=1)
    refused(capsys, ["data", "info", str(folder)], *fragments)
    out = tmp_path / "runs"
    refused(capsys, ["run", "--methods", "mean", "--dataset", "h5ad", "--data-dir", str(tmp_path / "data"),
                     "--out", str(out), "--no-progress"], *fragments)
    assert nothing_written(out)


def test_the_counts_layer_option_reads_the_raw_counts(tmp_path, cache, capsys):
    folder = tmp_path / "h5ad"
    write_section(folder / "a.h5ad", counts="lognorm")
    assert main(["data", "info", str(folder), "--data-option", "counts_layer=counts"]) == 0
    assert "a " in capsys.readouterr().out


def test_an_empty_file_is_refused(tmp_path, cache, capsys):
    import anndata as ad

    folder = tmp_path / "h5ad"
    write_section(folder / "a.h5ad")
    ad.AnnData(X=np.zeros((0, 3), np.float32)).write_h5ad(folder / "empty.h5ad")
    refused(capsys, ["data", "info", str(folder)], "empty.h5ad", "no spots")


@pytest.mark.parametrize("case", ["one patient", "unknown panel gene", "no such fold"])
def test_refused_runs_write_nothing(case, tmp_path, cache, capsys):
    """config.json, the MLflow store and split files appear only once the run is known to be able to start."""
    data = tmp_path / "data"
    out = tmp_path / "runs"
    argv = ["run", "--methods", "mean", "--dataset", "h5ad", "--data-dir", str(data), "--out", str(out),
            "--no-progress", "--panel", "top-mean:10"]
    if case == "one patient":
        write_section(data / "h5ad" / "a.h5ad", patient="P1")
        write_section(data / "h5ad" / "b.h5ad", patient="P1", seed=1)
        line = refused(capsys, argv, "'lopo' needs at least two patients", "come from patient P1",
                       "--protocol loso")
        assert "groups" not in line
    elif case == "unknown panel gene":
        two_patients(data / "h5ad")
        (tmp_path / "panel.txt").write_text("G1\nNOT_A_GENE\n")
        refused(capsys, argv + ["--panel", f"file:{tmp_path / 'panel.txt'}"], "panel.txt", "NOT_A_GENE")
    else:
        two_patients(data / "h5ad")
        refused(capsys, argv + ["--folds", "7"], "no fold(s) [7]")
    assert nothing_written(out)
    assert not (out / "mlflow.db").exists()


def test_files_of_which_only_some_name_a_patient_are_named(tmp_path, cache, capsys):
    """One file with a patient column, one without: the note names the file without, not "the data"."""
    from bench.data.formats import load_path

    folder = tmp_path / "data" / "h5ad"
    write_section(folder / "a.h5ad", patient="P1", seed=0)
    write_section(folder / "b.h5ad", patient=None, seed=1)
    dataset = load_path(folder)
    note = dataset.patients_unknown_note()
    assert note.startswith("1 of 2 sections name no patient (b (") and "b.h5ad" in note and "a.h5ad" not in note
    assert "the others' patients: obs column 'patient'" in note and "the data name no patients" not in note
    assert main(["data", "info", str(folder)]) == 0
    assert note in capsys.readouterr().out
    write_section(folder / "a.h5ad", patient=None, seed=0)
    assert load_path(folder).patients_unknown_note().startswith("the data name no patients")
