"""What a job folder is: its setting, its key, its files, and the ``COMPLETE`` record that makes it a result.

Shared by the runner (which writes job folders) and the evaluation (which reads them), so it sits below
both. A job folder's path is ``jobs/<dataset>/<setting>/<method>/seed<s>/fold<f>``: the setting's name
(``Setting.name``) keeps the results of several settings (protocol, panel, target, validation source) apart
in one run folder. A job folder only ever appears whole: every file is written into a temporary sibling folder, the
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
from bench.data.preprocess import DEFAULT_TARGET
from bench.data.splits import DEFAULT_VALIDATION, protocol_folder_name
from bench.errors import InputError, UserError

log = logging.getLogger(__name__)
# What a job writes: its predictions with the truth and counts, the training genes' statistics (HVG, SVG), its
# record and configuration and its panel. No score: scoring is the evaluation's (bench.evaluation.evaluate).
JOB_FILES = ("predictions.npz", "train_gene_stats.csv", "result.json", "config.json", "panel.txt")
COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class Setting:
    """What decides what a score means beyond the method and the data: the split, the gene panel, the target
    and where a method that chooses its epoch finds its validation set. One value, read by the job folder's
    path, the job's configuration hash, the runner, the evaluation's comparison tables and ``bench reproduce``."""

    protocol: str
    panel: str
    target: str = DEFAULT_TARGET
    validation: str = DEFAULT_VALIDATION  # bench.data.splits.VALIDATION_SOURCES

    @classmethod
    def of(cls, config) -> "Setting":
        """The setting of a run configuration (``BenchConfig`` or anything with the same four fields)."""
        return cls(config.protocol, config.panel, config.target, config.validation)

    @classmethod
    def from_record(cls, benchmark: dict) -> "Setting":
        """The setting of a job's saved configuration (``config.json``'s ``benchmark``); a job made before
        ``--target`` or ``--validation`` existed ran with their defaults."""
        return cls(benchmark["protocol"], benchmark["panel"], benchmark.get("target", DEFAULT_TARGET),
                   benchmark.get("validation", DEFAULT_VALIDATION))

    @property
    def name(self) -> str:
        """Short, stable and usable as a folder name: ``<protocol>_<panel>_<target>``, with ``_valtest`` when the
        validation set was the test fold, e.g. ``lopo_hvg250_per-spot``. A file panel is named by its file's
        stem and a hash of its path. No part holds ``_``, so a name always has three or four parts."""
        kind, _, arg = self.panel.partition(":")
        if kind == "file":
            digest = hashlib.sha256(arg.encode()).hexdigest()[:8]
            panel = f"file-{''.join(c if c.isalnum() else '-' for c in Path(arg).stem)}-{digest}"
        else:
            panel = kind + arg
        parts = [protocol_folder_name(self.protocol), panel, self.target]
        if self.validation != DEFAULT_VALIDATION:
            parts.append("valtest" if self.validation == "test-fold" else self.validation.replace("_", "-"))
        return "_".join(parts)

    def identity(self) -> dict:
        """The setting's part of a job's configuration hash (bench.run.job): the protocol is in the path;
        the defaults of fields added later are left out, so results made before them keep their hash."""
        ident = {"panel": self.panel}
        if self.target != DEFAULT_TARGET:
            ident["target"] = self.target
        if self.validation != DEFAULT_VALIDATION:
            ident["validation"] = self.validation
        return ident

    def describe(self) -> str:
        text = f"{self.protocol} split, panel {self.panel}, {self.target} target"
        if self.validation == "test-fold":
            text += ", epoch chosen on the test fold (LEAKS: the published run's choice)"
        return text

    @property
    def leaks_test(self) -> bool:
        return self.validation == "test-fold"


@dataclass(frozen=True)
class JobKey:
    dataset: str
    setting: Setting
    fold: int
    method: str
    seed: int

    @property
    def protocol(self) -> str:
        return self.setting.protocol

    def __str__(self) -> str:
        """The job's key and its folder's path under ``jobs/``."""
        return f"{self.dataset}/{self.setting.name}/{self.method}/seed{self.seed}/fold{self.fold}"

    def folder(self, out: Path) -> Path:
        return Path(out) / "jobs" / str(self)

    def record(self) -> dict:
        """The key as ``result.json`` saves it (``job``): the setting's fields flat beside its name."""
        return {"dataset": self.dataset, "protocol": self.protocol, "setting": self.setting.name,
                "fold": self.fold, "method": self.method, "seed": self.seed}


def job_folder(run_dir: Path, job_key: str) -> Path:
    """The folder of the job whose key (``str(JobKey)``, the ``job_key`` of the results tables) is given."""
    return Path(run_dir) / "jobs" / job_key


def setting_folders(run_dir: Path, dataset: str, setting: Setting) -> list[Path]:
    """The complete job folders of one setting of a dataset (``find_job_folders``'s order)."""
    scope = Path(run_dir) / "jobs" / dataset / setting.name
    return [f for f in find_job_folders(run_dir) if f.parent.parent.parent == scope]


def run_setting(run_dir: Path) -> tuple[str, Setting] | None:
    """(dataset, setting) of the last run into this folder (its ``config.json``), or None without one."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        return config["dataset"], Setting.from_record(config)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class OldLayoutError(InputError):
    """A run folder whose job folders were written before the setting was part of their path."""


def check_layout(run_dir: Path) -> None:
    """Refuse a run folder holding job folders made before settings were part of the path
    (``jobs/<dataset>/<protocol>/...``), with the commands that move them to where they now belong. A
    setting's name always holds ``_`` and a protocol's folder name never does, so the two cannot be confused.
    Moving is all a migration needs: a job's configuration hash does not depend on its path."""
    moves = []
    for record in sorted(Path(run_dir).glob(f"jobs/*/*/*/seed*/fold*/{COMPLETE}")):
        method_dir = record.parent.parent.parent
        if "_" in method_dir.parent.name or any(m[0] == method_dir for m in moves):
            continue
        try:
            setting = Setting.from_record(json.loads((record.parent / "config.json").read_text())["benchmark"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a result (find_job_folders says so); nothing to move
        moves.append((method_dir, method_dir.parent.parent / setting.name / method_dir.name))
    if moves:
        commands = "; ".join(f"mkdir -p {dst.parent} && mv {src} {dst}" for src, dst in moves)
        raise OldLayoutError(f"{Path(run_dir) / 'jobs'}: job folders made before the setting was part of their "
                             f"path; move them to their setting's folder, then rerun: {commands}")


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
    seed and fold by number. A run folder of the layout before settings is refused (``check_layout``)."""
    check_layout(run_dir)
    try:
        order = json.loads((Path(run_dir) / "config.json").read_text())["methods"]
    except (OSError, ValueError, KeyError):
        order = []

    def key(folder: Path):
        dataset, setting, method, seed, fold = folder.parts[-5:]
        rank = order.index(method) if method in order else len(order)
        return dataset, setting, rank, method, int(seed[len("seed"):]), int(fold[len("fold"):])

    folders = []
    for record in Path(run_dir).glob(f"jobs/*/*/*/seed*/fold*/{COMPLETE}"):
        if job_record_intact(record.parent):
            folders.append(record.parent)
        else:
            log.warning("%s: files do not match its COMPLETE record; left out (rerun the benchmark to redo it)",
                        record.parent)
    return sorted(folders, key=key)
