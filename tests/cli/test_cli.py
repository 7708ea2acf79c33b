"""The command line, through ``bench.cli.main`` (in process) and ``python -m bench ui`` (a subprocess)."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import HER2ST, REPO, needs_her2st

from bench.cli import main
from bench.data import download
from bench.registry import get_dataset_module


def _unused_port() -> int:
    """A port nothing listens on (bound and released again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """her2st downloads go to a closed local port, without retry delays; cwd is a scratch folder."""
    monkeypatch.setenv("STBENCH_HER2ST_URL", f"http://127.0.0.1:{_unused_port()}/")
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0)
    monkeypatch.delenv("STBENCH_DATA", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return data_dir.resolve()


# --- list ----------------------------------------------------------------------------------------

def test_list_names_methods_datasets_protocols(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
            sections[current] = []
        elif line.strip():
            sections[current].append(line.split()[0])
    assert {"mean", "linear-probe", "spatial-oracle"} <= set(sections["methods"])
    assert {"her2st", "synthetic"} <= set(sections["datasets"])
    origin = {line.split()[0]: line.split(None, 1)[1] for line in out.split("datasets:")[1].split("protocols:")[0]
              .splitlines() if line.strip()}
    assert (origin["her2st"], origin["synthetic"]) == ("downloadable", "generated")
    assert origin["visium"].startswith("your files")  # the user's own data is neither downloaded nor generated
    assert sections["protocols"] == ["lopo", "loso", "patient-kfold:<k>", "published"]


def test_list_imports_neither_torch_nor_any_method_module():
    """`bench list` reads the method files' source: listing must not cost torch's import (seconds)."""
    code = ("import sys\n"
            "from bench.cli import main\n"
            "assert main(['list']) == 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'mlflow')\n"
            "               or m.startswith('stbench.methods'))\n"
            "print('IMPORTED', heavy)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "mclstexp" in done.stdout and "st-net" in done.stdout
    assert "IMPORTED []" in done.stdout, done.stdout.splitlines()[-1]


def test_help_names_the_datasets_and_the_ui_port(capsys):
    from bench.cli import build_parser

    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert re.search(r"--dataset NAME\s+one of cscc, h5ad, her2st, hest, synthetic, visium", run_help)
    ui_help = build_parser()._subparsers._group_actions[0].choices["ui"].format_help()
    assert re.search(r"--port PORT\s+port to listen on \(default 5000\)", ui_help)


def test_reproduce_runs_every_setting_by_default_and_takes_folds():
    """The default is every reproduce setting, TRIPLEX's (t) and (u) included (pipeline.reproduce reads None
    as all); --folds reaches the configuration every setting's run is built from."""
    from bench.cli import build_parser

    args = build_parser().parse_args(["reproduce", "her2st", "--methods", "triplex", "--folds", "0,1"])
    assert args.settings is None and args.folds == [0, 1]
    args = build_parser().parse_args(["reproduce", "her2st", "--methods", "triplex", "--settings", "t,u"])
    assert args.settings == ["t", "u"] and args.folds is None


# --- unknown names and parameters ----------------------------------------------------------------

@pytest.mark.parametrize("option, value, kind, valid", [
    ("--methods", "nope", "method", ["mean", "linear-probe", "spatial-oracle"]),
    ("--dataset", "nope", "dataset", ["her2st", "synthetic"]),
    ("--protocol", "nope", "protocol", ["lopo", "loso", "patient-kfold"]),
])
def test_run_unknown_name(option, value, kind, valid, offline, tmp_path, capsys):
    argv = {"--methods": "mean", "--dataset": "synthetic", "--protocol": "lopo"}
    argv[option] = value
    out = tmp_path / "out"
    rc = main(["run", *[a for kv in argv.items() for a in kv], "--out", str(out), "--data-dir", str(offline),
               "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"unknown {kind} 'nope'" in err
    for name in valid:
        assert name in err
    assert not out.exists()
    assert _files_under(offline) == []


def test_run_unknown_parameter(offline, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--methods", "mean", "--dataset", "synthetic", "--set", "mean.nope=1",
               "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "'mean'" in error_lines[0] and "nope" in error_lines[0]
    assert not (out / "jobs").exists()  # refused before any job ran


def test_run_parameter_for_method_not_run(offline, tmp_path, capsys):
    rc = main(["run", "--methods", "mean", "--dataset", "synthetic", "--set", "linear-probe.patch_px=32",
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "'linear-probe'" in capsys.readouterr().err


def test_malformed_set_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--methods", "mean", "--set", "nodot=1"])
    assert exit_info.value.code == 2
    assert "method.param=value" in capsys.readouterr().err


# --- no data, no internet ------------------------------------------------------------------------

def test_run_offline_without_data_fails_cleanly(offline, tmp_path, capsys):
    rc = main(["run", "--methods", "mean", "--data-dir", str(offline), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert str(offline) in error_lines[0]
    assert "STBENCH_DATA" in error_lines[0]
    # Nothing half-written: at most empty folders (no .part, no data files), and no run folder.
    assert _files_under(offline) == []
    assert not (tmp_path / "cwd" / "runs").exists()


def test_run_no_fetch_without_data(offline, tmp_path, capsys):
    rc = main(["run", "--no-fetch", "--methods", "mean", "--data-dir", str(offline),
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert str(offline / "her2st") in error_lines[0]
    assert "STBENCH_DATA" in error_lines[0]
    assert _files_under(offline) == []


def test_run_after_failed_download_still_explains(offline, tmp_path, capsys):
    argv = ["run", "--methods", "mean", "--data-dir", str(offline), "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(argv) == 2
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "STBENCH_DATA" in err


# --- data fetch / info from a local server -------------------------------------------------------

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def her2st_server():
    handler = functools.partial(_QuietHandler, directory=str(HER2ST))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.integration
@needs_her2st
def test_data_fetch_then_info(her2st_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STBENCH_DATA", raising=False)
    base_url = f"http://127.0.0.1:{her2st_server.server_address[1]}/"
    data_dir = tmp_path / "data"
    module = get_dataset_module("her2st")
    # The local server holds the 125 files of the shared copy (6 of 36 images): fetch the manifest's rows for
    # those (the missing images are tested by tests/data/test_download.py), then describe the partial copy.
    full_manifest = module.MANIFEST
    subset = tmp_path / "present.tsv"
    subset.write_text("".join(line for line in full_manifest.read_text().splitlines(keepends=True)
                              if line.startswith(("#", "path\t")) or (HER2ST / line.split("\t")[0]).is_file()))
    monkeypatch.setattr(module, "MANIFEST", subset)
    n_files = len(download.read_manifest(subset))
    assert n_files == 125

    assert main(["data", "fetch", "her2st", "--base-url", base_url, "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{n_files} downloaded" in out
    assert len(her2st_server.requests) == n_files
    assert not [p for p in _files_under(data_dir) if p.name.endswith(".part")]
    assert len(_files_under(data_dir / "her2st")) == n_files

    # A second fetch verifies what is there and downloads nothing.
    assert main(["data", "fetch", "her2st", "--base-url", base_url, "--data-dir", str(data_dir)]) == 0
    assert f"{n_files} already present" in capsys.readouterr().out
    assert len(her2st_server.requests) == n_files

    monkeypatch.setattr(module, "MANIFEST", full_manifest)
    assert main(["data", "info", "her2st", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    # The partial copy says once which sections lack images and how to fetch them.
    note = [line for line in out.splitlines() if "have no image in this copy" in line]
    assert len(note) == 1
    assert "30 of 36 sections" in note[0] and "A1, A2" in note[0] and "python -m bench data fetch her2st" in note[0]
    assert "30 file(s) missing" in note[0]
    assert "36 sections" in out
    assert "8 patients" in out
    assert "6 with an image" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+[A-H]\d\s+patient [A-H]\b", line)]
    assert len(rows) == 36
    imaged = {line.split()[0]: float(re.search(r"image ([0-9.]+) µm/px", line).group(1))
              for line in rows if "µm/px" in line}
    assert sorted(imaged) == ["B4", "C2", "C3", "C4", "C5", "C6"]
    assert all(0.68 < v < 0.70 for v in imaged.values())  # fitted to the 200 µm grid (was 0.73: nearest neighbour)
    assert sum("expression only" in line for line in rows) == 30


# --- ui ------------------------------------------------------------------------------------------

def _outbound_ip() -> str | None:
    """This machine's non-loopback address, if it has one (UDP connect sends no packet)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in the group."""
    proc_fs = Path("/proc")
    if (proc_fs / "self" / "stat").is_file():
        for stat in proc_fs.glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the session the test started (bench ui -> mlflow -> uvicorn workers); SIGKILL stragglers."""
    pgid = proc.pid  # start_new_session=True: the process leads its own group
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 15
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)


def _port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port: a connection is refused and the port can be bound."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return False
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_ui_serves_a_moved_run_folder_and_sigterm_stops_its_server(tmp_path):
    """A run folder copied elsewhere (the original deleted) opens in `bench ui` with its own artifacts, on
    loopback only; SIGTERM to `bench ui` stops the MLflow server it started, so the port is free after."""
    original = tmp_path / "original"
    assert main(["run", "--methods", "mean", "--dataset", "synthetic", "--panel", "top-mean:10",
                 "--out", str(original), "--no-progress"]) == 0
    runs = tmp_path / "elsewhere" / "runs"
    shutil.copytree(original, runs)
    shutil.rmtree(original)

    port = _unused_port()
    log_path = tmp_path / "ui.log"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--out", str(runs), "--port", str(port)],
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"`bench ui` exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status = response.status
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert status == 200, f"no answer on 127.0.0.1:{port} within 90 s:\n{log_path.read_text(errors='replace')}"
        ip = _outbound_ip()
        if ip is not None:  # bound to loopback only: not reachable on the machine's other address
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=3).close()
        job = next((runs / "jobs" / "synthetic").glob("lopo_*/mean/seed0/fold0"))
        run_id = json.loads((job / "result.json").read_text())["mlflow_run_id"]
        url = f"http://127.0.0.1:{port}/get-artifact?path=result.json&run_uuid={run_id}"
        with urllib.request.urlopen(url, timeout=30) as response:  # served from the copy: the original is gone
            assert response.read() == (job / "result.json").read_bytes()

        proc.send_signal(signal.SIGTERM)  # to `bench ui` alone, as a service manager or `kill` would
        assert proc.wait(timeout=60) == 0
        assert _port_is_free(port), f"port {port} still in use after `bench ui` ended on SIGTERM"
    finally:
        _stop_process_group(proc)
    assert f"http://127.0.0.1:{port}" in log_path.read_text(errors="replace")
    assert not any(cwd.iterdir()), f"the UI wrote into its working directory: {_files_under(cwd)}"


def test_ui_without_store(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ui", "--out", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store" in err
    assert str(empty.resolve() / "mlflow.db") in err


# --- the plan: mistakes refused before anything is read or written ----------------------------------

def test_a_parameter_value_typo_is_refused_before_anything_is_written(offline, tmp_path, capsys, monkeypatch):
    """`--set mclstexp.distance=cosin` used to train for minutes and fail in predict; an encoder that cannot be
    had used to fail every job. Both are one line, exit 2, before any download, folder or MLflow store."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "out"
    for extra, line in (
            (["--methods", "mclstexp", "--set", "mclstexp.distance=cosin"],
             "error: method 'mclstexp': parameter distance='cosin' is not allowed; allowed: one of 'l1', 'l2'"),
            (["--methods", "mean,linear-probe", "--encoder", "hf-hub:MahmoodLab/UNI"],
             "error: encoder hf-hub:MahmoodLab/UNI: the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set)")):
        assert main(["run", *extra, "--out", str(out), "--data-dir", str(offline), "--no-progress"]) == 2
        err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error:")]
        assert len(err) == 1 and err[0].startswith(line), err
    assert not out.exists() and _files_under(offline) == [] and _files_under(Path.cwd()) == []


def _subcommands():
    from bench.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices


def test_every_command_names_its_run_folder_positionally_or_with_out(capsys):
    from bench.cli import build_parser, parse

    parser = build_parser()
    with_folder = [name for name, sub in _subcommands().items()
                   if any(a.dest == "out_option" for a in sub._actions)]
    assert set(with_folder) == {"run", "reproduce", "evaluate", "report", "ui"}
    for name in with_folder:
        lead = ["her2st"] if name == "reproduce" else []  # reproduce's dataset comes first
        before = [*lead, "--methods", "mean"] if name in ("run", "reproduce") else []
        for form in (["somewhere"], ["--out", "somewhere"], ["somewhere", "--out", "somewhere"]):
            assert parse(parser, [name, *before, *form]).out == "somewhere", (name, form)
            assert parse(parser, [name, *lead, *form, *before[len(lead):]]).out == "somewhere", (name, form)
        with pytest.raises(SystemExit):
            parse(parser, [name, *before, "here", "--out", "there"])
        assert "given twice" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            parse(parser, [name, *before, "here", "there"])
        assert "unrecognized arguments" in capsys.readouterr().err


def test_each_option_of_run_that_reproduce_offers_reaches_the_plan(monkeypatch):
    """reproduce once parsed --data-option and dropped it. Every option the two share must change the same
    settings of the plan (or of the data fetch before it) in both; the options are read from argparse."""
    import argparse
    from dataclasses import asdict

    from bench import cli, pipeline
    from bench.data import locations
    from bench.run.config import BenchConfig

    class Reached(Exception):
        pass

    seen = {}
    monkeypatch.setattr(BenchConfig, "resolved", lambda self: seen.setdefault("plan", asdict(self)) and self)
    monkeypatch.setattr(locations, "ensure_data", lambda *a, **kw: seen.setdefault("fetch", (a, kw)))
    for name in ("benchmark", "reproduce"):
        monkeypatch.setattr(pipeline, name, lambda *a, **kw: (_ for _ in ()).throw(Reached()))
    samples = {cli._ints: "1,2", cli._csv: "mean,spatial-oracle", cli._param: "mean.alpha=2",
               cli._spot_cap: "7", cli._data_option: "patient_key=donor", int: "3", None: "elsewhere"}

    parser = cli.build_parser()

    def what_reaches(command: str, extra: list[str]) -> dict:
        base = {"run": ["run", "--methods", "mean"], "reproduce": ["reproduce", "her2st", "--methods", "mean"]}
        args = cli.parse(parser, [*base[command], *extra])
        seen.clear()
        with pytest.raises(Reached):
            {"run": cli.cmd_run, "reproduce": cli.cmd_reproduce}[command](args)
        return {**seen["plan"], "fetch": seen["fetch"]}

    run, reproduce = _subcommands()["run"], _subcommands()["reproduce"]
    run_options = {s for a in run._actions for s in a.option_strings}
    shared = [a for a in reproduce._actions if a.option_strings and a.option_strings[0] in run_options
              and not isinstance(a, argparse._HelpAction) and a.dest != "debug"]
    assert len(shared) >= 15
    defaults = {c: what_reaches(c, []) for c in ("run", "reproduce")}
    for action in shared:
        option = action.option_strings[-1]
        if action.nargs == 0:
            extra = [option]
        elif action.choices:
            run_default = next(a.default for a in run._actions if option in a.option_strings)
            extra = [option, next(c for c in action.choices if c not in (action.default, run_default))]
        else:
            extra = [option, samples[action.type]]
        changed = {}
        for command in ("run", "reproduce"):
            got = what_reaches(command, extra)
            changed[command] = {k for k in got if got[k] != defaults[command][k]}
        assert changed["reproduce"], f"reproduce {option} reaches nothing"
        assert changed["reproduce"] == changed["run"], option
