"""Where a run may download (issue 30), through ``bench.cli.main`` with the local HTTP server of the download
tests: a folder the user names (``--data-dir``, ``STBENCH_DATA``) is only read unless ``--download`` asks for
it, the default user-cache folder downloads what it lacks, a missing required file is one line naming it, and
an offline download names the first required file it could not get.

The data is a tiny her2st stand-in in the repository's layout (three sections of three patients, 25 spots and
8 genes each, one small image per section) served from ``remote/``, with a manifest of its SHA-256s put in
place of the shipped one, so each case runs in a few seconds.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from test_download import serve  # noqa: F401  (the fixture: a local HTTP server with Range support)

from bench.cli import main
from bench.data import download, locations
from bench.registry import get_dataset_module

SECTIONS = ["A1", "B1", "C4"]  # one section per patient, so lopo has three folds
GRID = 5  # 5 x 5 spots
PX = 20  # pixels between neighbouring spots
GENES = [f"G{i}" for i in range(8)]


def _jpeg() -> bytes:
    from PIL import Image

    side = GRID * PX + 20
    texture = np.random.default_rng(1).integers(60, 200, (side, side, 3), dtype=np.uint8)  # tissue, not glass
    buffer = io.BytesIO()
    Image.fromarray(texture).save(buffer, "JPEG")
    return buffer.getvalue()


def _remote_files() -> dict[str, bytes]:
    """Every file of the stand-in, in the manifest's order (as the shipped one: counts, images, spot files)."""
    rng = np.random.default_rng(0)
    spots = [(x, y) for x in range(1, GRID + 1) for y in range(1, GRID + 1)]
    counts, images, spotfiles = {}, {}, {}
    for sid in SECTIONS:
        table = rng.poisson(5.0, (len(spots), len(GENES)))
        rows = ["\t" + "\t".join(GENES)] + [f"{x}x{y}\t" + "\t".join(map(str, r)) for (x, y), r in zip(spots, table)]
        counts[f"data/ST-cnts/{sid}.tsv.gz"] = gzip.compress(("\n".join(rows) + "\n").encode())
        images[f"data/ST-imgs/{sid[0]}/{sid}/{sid}_HE.jpg"] = _jpeg()
        lines = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"] + [
            f"{x}\t{y}\t{x}.0\t{y}.0\t{10 + PX * (x - 1)}\t{10 + PX * (y - 1)}\t1" for x, y in spots]
        spotfiles[f"data/ST-spotfiles/{sid}_selection.tsv"] = ("\n".join(lines) + "\n").encode()
    return {**counts, **images, **spotfiles}


REMOTE = _remote_files()
N_FILES, N_OPTIONAL = len(REMOTE), sum(p.startswith("data/ST-imgs/") for p in REMOTE)
SPOT_FILE = "data/ST-spotfiles/C4_selection.tsv"
COUNTS = "data/ST-cnts/B1.tsv.gz"
IMAGE = "data/ST-imgs/A/A1/A1_HE.jpg"  # listed before every spot file


@pytest.fixture
def site(tmp_path, monkeypatch, serve, tracking_uri):  # noqa: F811
    """The stand-in served over HTTP as her2st's download source, its manifest in place of the shipped one,
    the user cache under tmp, no STBENCH_DATA, and a ``copy(without=...)`` that writes a user's own copy."""
    remote = tmp_path / "remote"
    for relpath, data in REMOTE.items():
        (remote / relpath).parent.mkdir(parents=True, exist_ok=True)
        (remote / relpath).write_bytes(data)
    manifest = tmp_path / "her2st.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {p}\n" for p, d in REMOTE.items()))
    monkeypatch.setattr(get_dataset_module("her2st"), "MANIFEST", manifest)
    server = serve(remote)
    monkeypatch.setenv("STBENCH_HER2ST_URL", server.base_url)
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0)
    monkeypatch.delenv("STBENCH_DATA", raising=False)
    monkeypatch.setattr(locations, "_user_cache", lambda: tmp_path / "user-cache")
    monkeypatch.chdir(tmp_path)

    def copy(without=()) -> Path:
        data_dir = tmp_path / "copy"
        for relpath, data in REMOTE.items():
            if relpath not in without:
                (data_dir / "her2st" / relpath).parent.mkdir(parents=True, exist_ok=True)
                (data_dir / "her2st" / relpath).write_bytes(data)
        return data_dir

    server.copy, server.remote, server.tmp, server.tracking_uri = copy, remote, tmp_path, tracking_uri
    return server


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for the module (each run in its own experiment): a new store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _run(site, *extra: str) -> list[str]:
    tmp = site.tmp
    return ["run", "--methods", "mean", "--dataset", "her2st", "--protocol", "lopo", "--folds", "0",
            "--panel", "top-mean:5", "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
            "--tracking-uri", site.tracking_uri, "--experiment", tmp.name, "--no-progress", "--device", "cpu",
            "--profile", "quick", *extra]


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- 1, 2: a folder the user names is only read; a missing required file is one line ----------------------

@pytest.mark.parametrize("named_by", ["--data-dir", "STBENCH_DATA"])
@pytest.mark.parametrize("missing, role", [(SPOT_FILE, "spot positions of section C4"),
                                           (COUNTS, "spot-by-gene counts of section B1")])
def test_missing_required_file_in_a_named_folder_is_one_line_and_nothing_is_fetched_or_written(
        site, capsys, monkeypatch, named_by, missing, role):
    data_dir = site.copy(without=(missing, IMAGE))
    before = _snapshot(data_dir)
    if named_by == "STBENCH_DATA":
        monkeypatch.setenv("STBENCH_DATA", str(data_dir))
        argv = _run(site)
    else:
        argv = _run(site, "--data-dir", str(data_dir))
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {data_dir / 'her2st' / missing}: file not found, needed for the {role};")
    assert f"2 of the {N_FILES} files of the her2st manifest are missing" in line
    assert "(1 required, 1 optional)" in line
    assert f"`python -m bench data fetch her2st --data-dir {data_dir}`" in line
    assert site.requests == []  # the server was never asked: no download was tried
    assert _snapshot(data_dir) == before
    assert not (site.tmp / "out").exists()


def test_folder_without_the_dataset_is_refused_without_a_download(site, capsys):
    data_dir = site.tmp / "empty"
    data_dir.mkdir()
    assert main(_run(site, "--data-dir", str(data_dir))) == 2
    line = _error_line(capsys)
    assert f"no her2st data in {data_dir / 'her2st'} (none of the {N_FILES} files of its manifest)" in line
    assert f"python -m bench data fetch her2st --data-dir {data_dir}" in line and "STBENCH_DATA" in line
    assert site.requests == [] and list(data_dir.iterdir()) == []


def test_reproduce_refuses_the_same_way(site, capsys):
    data_dir = site.copy(without=(SPOT_FILE,))
    before = _snapshot(data_dir)
    assert main(["reproduce", "her2st", "--methods", "mean", "--data-dir", str(data_dir), "--no-progress",
                 "--out", str(site.tmp / "out")]) == 2
    assert f"{data_dir / 'her2st' / SPOT_FILE}: file not found, needed for the spot positions of section C4" \
        in _error_line(capsys)
    assert site.requests == [] and _snapshot(data_dir) == before and not (site.tmp / "out").exists()


def test_data_info_names_the_missing_file_too(site, capsys):
    data_dir = site.copy(without=(COUNTS,))
    assert main(["data", "info", "her2st", "--data-dir", str(data_dir)]) == 2
    line = _error_line(capsys)
    assert "needed for the spot-by-gene counts of section B1" in line and "(1 required, 0 optional)" in line
    assert site.requests == []


@pytest.mark.slow
def test_partial_copy_without_images_runs_untouched_and_names_them_once(site, capsys, caplog):
    """The run reads the named folder and writes nothing into it: the same files, with the same mtimes."""
    data_dir = site.copy(without=(IMAGE,))
    before = _snapshot(data_dir)
    assert main(_run(site, "--data-dir", str(data_dir))) == 0, capsys.readouterr().err
    assert _snapshot(data_dir) == before
    assert site.requests == []
    notes = [r.getMessage() for r in caplog.records if "have no image in this copy" in r.getMessage()]
    assert len(notes) == 1 and "1 of 3 sections" in notes[0] and "(A1)" in notes[0]
    assert f"`python -m bench data fetch her2st --data-dir {data_dir}` downloads the rest" in notes[0]
    assert (site.tmp / "out" / "results").is_dir()


# --- downloads that were asked for, and the default folder ----------------------------------------------

@pytest.mark.slow
def test_download_flag_repairs_a_named_folder_then_runs(site, capsys):
    data_dir = site.copy(without=(SPOT_FILE, IMAGE))
    assert main(_run(site, "--data-dir", str(data_dir), "--download")) == 0, capsys.readouterr().err
    for relpath in (SPOT_FILE, IMAGE):
        assert (data_dir / "her2st" / relpath).read_bytes() == REMOTE[relpath]
    # Only what was missing came over the network: the required file first, then the image.
    assert [path for path, _ in site.requests] == ["/" + SPOT_FILE, "/" + IMAGE]
    assert (site.tmp / "out" / "results").is_dir()


@pytest.mark.slow
def test_default_user_cache_downloads_on_the_first_run(site, capsys):
    assert main(_run(site)) == 0, capsys.readouterr().err
    root = site.tmp / "user-cache" / "data" / "her2st"
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == set(REMOTE)
    assert len(site.requests) == N_FILES
    assert main(_run(site)) == 0  # the second run downloads nothing
    assert len(site.requests) == N_FILES


def test_no_fetch_keeps_the_default_folder_as_it_is(site, capsys):
    assert main(_run(site, "--no-fetch")) == 2
    line = _error_line(capsys)
    assert "no her2st data in" in line and "`python -m bench data fetch her2st`" in line  # default: no --data-dir
    assert site.requests == [] and not (site.tmp / "user-cache").exists()


@pytest.mark.parametrize("argv, message", [
    (["--download", "--no-fetch"], "--download and --no-fetch contradict each other"),
    (["--download", "--dataset", "synthetic"], "--download: dataset 'synthetic' is generated, not downloaded"),
])
def test_contradictory_download_requests_are_refused(site, capsys, argv, message):
    assert main([*_run(site), *argv]) == 2
    assert message in _error_line(capsys)
    assert not (site.tmp / "out").exists()


# --- 3: offline, with a download asked for ---------------------------------------------------------------

def test_offline_download_names_the_first_required_file_and_says_offline(site, capsys, monkeypatch):
    monkeypatch.setenv("STBENCH_HER2ST_URL", f"http://127.0.0.1:{_closed_port()}/")
    data_dir = site.copy(without=(IMAGE, SPOT_FILE))  # the image comes first in the manifest
    before = _snapshot(data_dir)
    assert main(_run(site, "--data-dir", str(data_dir), "--download")) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {data_dir / 'her2st' / SPOT_FILE}: could not download the spot positions of "
                           f"section C4; the machine seems offline (no connection could be made:")
    assert IMAGE not in line and "H&E image" not in line
    assert f"2 of the {N_FILES} files of the her2st manifest are missing" in line and "(1 required, 1 optional)" in line
    assert f"python -m bench data fetch her2st --data-dir {data_dir}" in line
    assert _snapshot(data_dir) == before  # no connection: not even a .part
    assert not (site.tmp / "out").exists()


def test_server_without_the_file_is_not_called_offline(site, capsys):
    (site.remote / SPOT_FILE).unlink()
    data_dir = site.copy(without=(SPOT_FILE,))
    assert main(_run(site, "--data-dir", str(data_dir), "--download")) == 2
    line = _error_line(capsys)
    assert f"{data_dir / 'her2st' / SPOT_FILE}: could not download the spot positions of section C4" in line
    assert "HTTP 404" in line and "offline" not in line


@pytest.mark.slow
def test_run_keeps_going_when_only_an_optional_file_cannot_be_downloaded(site, capsys, caplog):
    (site.remote / IMAGE).unlink()
    data_dir = site.copy(without=(IMAGE, SPOT_FILE))
    assert main(_run(site, "--data-dir", str(data_dir), "--download")) == 0, capsys.readouterr().err
    assert (data_dir / "her2st" / SPOT_FILE).is_file() and not (data_dir / "her2st" / IMAGE).exists()
    warned = [r.getMessage() for r in caplog.records if "could not download the H&E image of section A1" in
              r.getMessage()]
    assert len(warned) == 1 and "running on the copy as it is" in warned[0]


def test_data_fetch_gets_required_files_before_optional_ones_and_fails_on_either(site, capsys):
    (site.remote / IMAGE).unlink()
    data_dir = site.copy(without=(IMAGE, SPOT_FILE, COUNTS))
    assert main(["data", "fetch", "her2st", "--data-dir", str(data_dir)]) == 2
    line = _error_line(capsys)
    assert f"{data_dir / 'her2st' / IMAGE}: could not download the H&E image of section A1; HTTP 404" in line
    assert "1 of the" in line and "(0 required, 1 optional)" in line  # both required files came first
    assert [path for path, _ in site.requests] == ["/" + COUNTS, "/" + SPOT_FILE, "/" + IMAGE]
    assert not [p for p in (data_dir / "her2st").rglob("*.part")]
    assert os.path.getsize(data_dir / "her2st" / COUNTS) == len(REMOTE[COUNTS])
