"""``bench ui``: the MLflow UI of a run folder, served on this machine until stopped, with every process it
started stopped with it."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.data.dataset import DataError
from bench.run.tracking import ARTIFACTS_DIR, anchor_artifacts, default_tracking_uri, is_own_store

log = logging.getLogger(__name__)
LOCALHOST = "127.0.0.1"


def ui_command(out: Path, tracking_uri: str | None, host: str = LOCALHOST, port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for a run folder's store (or another store); a moved or copied folder's
    artifact locations are pointed into it first."""
    out = Path(out)
    uri = tracking_uri or default_tracking_uri(out)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise DataError(f"{uri[len('sqlite:///'):]}: no MLflow store here; run `python -m bench run` first "
                        f"or pass --out/--tracking-uri")
    if host != LOCALHOST:  # the UI has no login: anyone who can reach the address sees every run
        log.warning("MLflow UI listening on %s: reachable from other machines, without a login", host)
    # One worker: a local UI for one user; it starts faster on small machines.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    if is_own_store(uri, out):
        anchor_artifacts(out)  # a moved or copied folder shows its own artifacts
        # Anything the server itself would store goes into the run folder, not the working directory.
        artifacts = (out.resolve() / ARTIFACTS_DIR).as_uri()
        cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    return cmd


def run_until_stopped(cmd: list[str]) -> int:
    """Run a server command until it ends or this process is asked to stop (SIGINT, SIGTERM, SIGHUP),
    then stop everything it started.

    ``mlflow ui`` starts a uvicorn server and job-runner processes of its own; stopping only the direct
    child would leave them holding the port. So the child leads a process group of its own, and the whole
    group is sent SIGTERM (SIGKILL after 10 s) before this returns. 0 when stopped by a signal."""
    class _Stop(Exception):
        pass

    def stop(signum, frame):
        raise _Stop(signum)

    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, stop) for s in stopping}  # before the child exists: no signal is lost
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
        return proc.wait()
    except _Stop:
        return 0
    finally:
        for s in stopping:  # a second Ctrl-C during the shutdown must not leave the group running
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            _stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    def alive() -> bool:
        proc.poll()  # reap the direct child as soon as it ends (a zombie is not a server)
        return _group_alive(proc.pid)

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not alive():
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in the process group."""
    proc_fs = Path("/proc")
    if not (proc_fs / "self" / "stat").is_file():  # not Linux: ask the kernel whether the group exists
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_fs.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
