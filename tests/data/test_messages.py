"""Messages say what the README promises: which kind of bad count and where, plurals, which sections lack a
panel's genes (and names that differ only in case), which of labels or coordinates a cluster map lacks, and
the suite's own one line on repeated names, without anndata's warning before it."""
from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.dataset import DataError
from bench.data.formats import spot_anndata
from bench.data.preprocess import _panel_from_file


def spots(n=4):
    return pd.DataFrame({"array_x": np.arange(n), "array_y": np.zeros(n, int), "pixel_x": np.arange(n) * 10.0,
                         "pixel_y": np.zeros(n)}, index=[f"s{i}" for i in range(n)])


@pytest.mark.parametrize("value, kind", [(np.nan, "1 non-finite (NaN or infinite) value(s), the first nan"),
                                         (np.inf, "1 non-finite (NaN or infinite) value(s), the first inf"),
                                         (-2.0, "1 negative value(s), the first -2")])
def test_a_bad_count_says_which_kind_and_the_first_spot_and_gene(value, kind):
    X = np.ones((4, 3))
    X[2, 1] = value
    with pytest.raises(DataError) as error:
        spot_anndata(X, spots(), ["Actb", "Mbp", "Gfap"], "MOB1", "mob1.h5ad", counts_from="X")
    assert str(error.value) == (f"mob1.h5ad: X (read as the raw counts of section MOB1) has {kind} at spot 's2', "
                                f"gene 'Mbp'; expected raw counts >= 0")


def adata(genes, sid):
    import anndata as ad

    a = ad.AnnData(X=np.ones((2, len(genes)), np.float32), var=pd.DataFrame(index=genes))
    a.uns["section_id"] = sid
    return a


def test_a_panel_error_says_which_sections_lack_which_genes_and_spots_the_case(tmp_path):
    panel = tmp_path / "panel.txt"
    panel.write_text("ERBB2\nGAPDH\nMBP\nActb\nGfap\n")
    sections = [adata(["Mbp", "Actb", "Gfap"], "MOB1"), adata(["Mbp", "Actb"], "MOB2")]
    with pytest.raises(DataError) as error:
        _panel_from_file(panel, sections)
    assert str(error.value) == (
        f"{panel}: unknown gene(s) ERBB2, GAPDH, MBP, Gfap (4 of the panel's 5 genes: 3 in no section; 1 missing "
        f"from section(s) MOB2); the data name 1 of them in another case (MBP -> Mbp): gene symbols are "
        f"case-sensitive (mouse Mbp, human MBP); write them as the data does")


def write_h5ad(path: Path, genes=("G0", "G1", "G2"), spot_names=None) -> Path:
    """An expression-only section (no image) of four spots."""
    import anndata as ad

    obs = spots()[["array_x", "array_y"]].rename(columns={"array_x": "array_col", "array_y": "array_row"})
    if spot_names is not None:
        obs.index = spot_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing repeated names warns too
        a = ad.AnnData(X=np.ones((4, len(genes)), np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))
        a.obsm["spatial"] = spots()[["pixel_x", "pixel_y"]].to_numpy()
        a.write_h5ad(path)
    return path


def test_one_section_one_patient_is_singular(tmp_path, capsys):
    assert main(["data", "info", str(write_h5ad(tmp_path / "MOB1.h5ad"))]) == 0
    assert "h5ad: 1 section from 1 patient; 0 with an image, 1 expression-only" in capsys.readouterr().out


@pytest.mark.parametrize("kind, fragment", [
    ("genes", "gene 'G1' appears more than once in the gene names of section MOB1"),
    ("spots", "spot name 's0' appears more than once in section MOB1"),
])
def test_repeated_names_are_one_line_with_no_anndata_warning(tmp_path, capsys, kind, fragment):
    path = write_h5ad(tmp_path / "MOB1.h5ad", **({"genes": ("G1", "G1", "G2")} if kind == "genes" else
                                                 {"spot_names": ["s0", "s0", "s2", "s3"]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["data", "info", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0]
    assert "Warning" not in err and not [w for w in caught if "not unique" in str(w.message)]


def test_a_missing_cluster_map_says_which_input_is_missing(monkeypatch):
    from bench.report import maps

    res = SimpleNamespace(friedman={})
    monkeypatch.setattr(maps, "map_job", lambda res, method: (0, 0))
    barcodes = np.array([f"AAAC{i}-1" for i in range(4)])  # no array coordinates in them
    labelled = {"section_ids": np.array(["A2"] * 4), "pathology_label": np.array(["a", "b", "a", "b"]),
                "cluster_label": np.array([""] * 4), "spot_ids": barcodes}
    unlabelled = {**labelled, "pathology_label": np.array([""] * 4)}
    cases = [(labelled, "Section A2: no array coordinates in its saved predictions; no cluster maps."),
             ({**unlabelled, "array_coords": np.arange(8).reshape(4, 2)},
              "Section A2: fewer than two labelled domains (pathology or cluster labels) in its saved predictions;"),
             (unlabelled, "Section A2: fewer than two labelled domains (pathology or cluster labels) and no array "
                          "coordinates in its saved predictions")]
    for arrays, said in cases:
        monkeypatch.setattr(maps, "_job_arrays", lambda *a, arrays=arrays: arrays)
        (note,) = maps._cluster_maps(res, "m")
        assert note.text.startswith(said)


@pytest.mark.parametrize("error, corrupt", [
    (OSError("image file is truncated (3 bytes not processed)"), True),
    (SyntaxError("broken PNG file"), True),
    (MemoryError(), False),  # says nothing about the file
    (TypeError("planted bug"), False),
])
def test_only_a_decoding_error_reads_as_a_corrupt_image(error, corrupt, tmp_path, monkeypatch):
    from PIL import Image

    from bench.cli import describe_error
    from bench.data.dataset import ImageFile

    path = tmp_path / "he.png"
    Image.new("RGB", (8, 8)).save(path)

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Image.Image, "convert", fail)
    with pytest.raises(Exception) as raised:
        ImageFile(path).read()
    message, code = describe_error(raised.value)
    if corrupt:
        assert isinstance(raised.value, DataError) and code == 2
        assert message.startswith(f"{path}: image is corrupt or truncated")
    else:
        assert raised.value is error and code == 1 and "corrupt" not in message


@pytest.mark.parametrize("error, unreadable", [
    (pd.errors.ParserError("Error tokenizing data. C error: Expected 3 fields in line 7, saw 5"), True),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), True),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), True),
    (MemoryError(), False),
    (TypeError("planted bug"), False),
])
def test_only_a_parse_error_reads_as_an_unreadable_table(error, unreadable, tmp_path, monkeypatch):
    from bench.registry import get_dataset_module

    path = tmp_path / "B1.tsv.gz"
    path.write_bytes(b"x")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pd, "read_csv", fail)
    with pytest.raises(Exception) as raised:
        get_dataset_module("her2st")._read_table(path)
    if unreadable:
        assert isinstance(raised.value, DataError) and str(raised.value).startswith(f"{path}: cannot be read")
    else:
        assert raised.value is error
