"""What a job folder is: its key, its files, and the ``COMPLETE`` record that makes it a result.

Shared by the runner (which writes job folders) and the evaluation (which reads them), so it sits below
both. A job folder only ever appears whole: every file is written into a temporary sibling folder, the
SHA-256 of each is recorded in ``COMPLETE``, and the folder is moved into place in one rename. A folder
whose files do not match its record (a killed job, a damaged file) is not a result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.data.dataset import OutputError
from bench.errors import UserError

log = logging.getLogger(__name__)
JOB_FILES = ("predictions.npz", "per_gene.csv", "train_gene_stats.csv", "result.json", "config.json", "panel.txt")
COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class JobKey:
    dataset: str
    protocol: str
    fold: int
    method: str
    seed: int

    def __str__(self) -> str:
        return f"{self.dataset}/{self.protocol}/{self.method}/seed{self.seed}/fold{self.fold}"

    def folder(self, out: Path) -> Path:
        return Path(out) / "jobs" / self.dataset / self.protocol.replace(":", "") / self.method / \
            f"seed{self.seed}" / f"fold{self.fold}"


class ConfigurationConflictError(UserError, RuntimeError):
    """A job folder holds a result made with another configuration (it is never overwritten)."""


def job_is_complete(folder: Path, config_hash: str) -> bool:
    """True when every file the job wrote is present with the checksum it was written with."""
    record = folder / COMPLETE
    if not record.is_file():
        return False
    try:
        doc = json.loads(record.read_text())
    except ValueError:
        return False
    if doc.get("config_hash") != config_hash:
        raise ConfigurationConflictError(f"{folder} holds a result made with a different configuration; use "
                                         f"another --out folder (results are never overwritten)")
    return job_record_intact(folder)


def job_record_intact(folder: Path) -> bool:
    """True when the folder's COMPLETE record exists and every file it lists has its recorded checksum
    (whatever configuration made it)."""
    try:
        doc = json.loads((Path(folder) / COMPLETE).read_text())
        files = doc["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((folder / f).is_file() and _sha256(folder / f) == s for f, s in files.items())


def write_job_folder(folder: Path, config_hash: str, writers: dict) -> None:
    """Write every file into a temporary sibling folder, then move it into place in one rename."""
    if set(writers) != set(JOB_FILES):
        raise ValueError(f"a job folder holds exactly {JOB_FILES}; got {sorted(writers)}")
    # Unique per process and host: two writers of one job (a requeued SLURM job) never share a temp folder.
    tmp = folder.with_name(f".{folder.name}.tmp-{os.uname().nodename}-{os.getpid()}")
    target = folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, write in writers.items():
            target = folder / name
            write(tmp / name)
        files = {name: _sha256(tmp / name) for name in writers}
        target = folder / COMPLETE
        (tmp / COMPLETE).write_text(json.dumps({"config_hash": config_hash, "files": files}, indent=1))
        target = folder
        if folder.exists():  # an incomplete earlier attempt: it holds no result worth keeping
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:  # disk full, no permission: every later job would fail too
        raise OutputError.writing(target, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_job_folders(run_dir: Path) -> list[Path]:
    """Job folders under ``<run-dir>/jobs`` whose COMPLETE record matches their files, in the order the
    runner makes them: methods in the order of the run's ``config.json`` (others after, by name), then
    seed and fold by number."""
    try:
        order = json.loads((Path(run_dir) / "config.json").read_text())["methods"]
    except (OSError, ValueError, KeyError):
        order = []

    def key(folder: Path):
        dataset, protocol, method, seed, fold = folder.parts[-5:]
        rank = order.index(method) if method in order else len(order)
        return dataset, protocol, rank, method, int(seed[len("seed"):]), int(fold[len("fold"):])

    folders = []
    for record in Path(run_dir).glob(f"jobs/*/*/*/seed*/fold*/{COMPLETE}"):
        if job_record_intact(record.parent):
            folders.append(record.parent)
        else:
            log.warning("%s: files do not match its COMPLETE record; left out (rerun the benchmark to redo it)",
                        record.parent)
    return sorted(folders, key=key)
