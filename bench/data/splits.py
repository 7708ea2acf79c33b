"""Cross-validation splits as files on disk: made once, reused, hashed, checked for patient leakage.

Protocols:
  ``lopo``               leave one patient out (default): every section of the test patient is held out.
  ``loso``               leave one section out, the published protocol. It LEAKS: the held-out section's
                         sibling cuts from the same tumour stay in training. Allowed because the protocol
                         declares it; every run on it is tagged ``split_leaks_patients=true``.
  ``patient-kfold:<k>``  patients shuffled with the seed and dealt into k folds.
  ``published``          the folds the dataset's papers used, declared by the dataset module
                         (``Dataset.published_sections``: leave one of those sections out, train on the
                         others of the list). For her2st, 32 folds A2..G3; it LEAKS like ``loso`` and is
                         tagged the same way. On a copy without every image, only the published folds
                         whose section has one are made (and named in the log).

Only sections with an image enter image-based folds. A split file records the SHA-256 of its content
(``content_sha256``); a file edited after it was made, one that puts a patient on both sides under a
patient-level protocol, or one with a fold whose training or test side is empty, is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import InputError, UnknownNameError

log = logging.getLogger(__name__)

PROTOCOLS = ("lopo", "loso", "patient-kfold:<k>", "published")
# Protocols that declare that a patient's sections may sit on both sides of a fold.
LEAKING_PROTOCOLS = ("loso", "published")


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass
class Split:
    dataset: str
    protocol: str
    seed: int
    leaks_patients: bool
    folds: list[Fold]
    path: Path | None = None
    sha256: str = ""
    edited: bool = False  # the file's content no longer matches the content_sha256 recorded in it
    unsaved: bool = False  # made by plan_split and not yet written (save_split writes it)
    patients: dict | None = None  # section -> patient the leak status was computed from


class LeakageError(InputError):
    """A split would put one patient's sections on both sides (refused unless asked for)."""


def parse_protocol(protocol: str) -> tuple[str, int | None]:
    if protocol in ("lopo", "loso", "published"):
        return protocol, None
    if protocol.startswith("patient-kfold:"):
        try:
            k = int(protocol.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 2:
            raise InputError(f"protocol {protocol!r}: k must be a whole number of at least 2")
        return "patient-kfold", k
    raise UnknownNameError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")


def make_folds(protocol: str, patient_of: dict[str, str], seed: int,
               published: tuple[str, ...] | None = None) -> list[Fold]:
    """Folds over the given sections (section id -> patient id); ``published``: the dataset's published
    sections (``--protocol published`` only)."""
    kind, k = parse_protocol(protocol)
    if kind == "published":
        return _published_folds(published, patient_of)
    sections = sorted(patient_of)
    patients = sorted(set(patient_of.values()))
    if kind == "loso":
        groups = [[s] for s in sections]
    elif kind == "lopo":
        groups = [[s for s in sections if patient_of[s] == p] for p in patients]
    else:
        if k > len(patients):
            raise InputError(f"protocol {protocol!r}: only {len(patients)} patients, cannot make {k} folds")
        order = np.random.default_rng(seed).permutation(len(patients))
        groups = [[s for s in sections if patient_of[s] in {patients[j] for j in order[f::k]}] for f in range(k)]
    if len(groups) < 2 and kind == "loso":
        raise InputError(f"protocol 'loso' needs at least two sections with an image; got {len(sections)} "
                         f"({', '.join(sections) or 'none'})")
    if len(groups) < 2:
        who = f"all come from patient {patients[0]}" if patients else "there are none"
        raise InputError(f"protocol {protocol!r} needs at least two patients, but the {len(sections)} section(s) "
                         f"with an image ({', '.join(sections)}) {who}. Use --protocol loso to hold out one section "
                         f"at a time (it leaks: the other sections of the patient stay in training), or add "
                         f"another patient's sections")
    return [Fold(i, tuple(s for s in sections if s not in g), tuple(g)) for i, g in enumerate(groups)]


def _published_folds(published: tuple[str, ...] | None, patient_of: dict[str, str]) -> list[Fold]:
    """Leave one published section out; train on the other published sections (those with an image here)."""
    if not published:
        raise InputError("protocol 'published': this dataset declares no published folds (its module sets no "
                         "PUBLISHED_SECTIONS); use lopo, loso or patient-kfold:<k>")
    usable = [s for s in published if s in patient_of]
    lacking = [s for s in published if s not in patient_of]
    if lacking:
        log.warning("protocol published: %d of the %d published folds can be made here (test sections %s); "
                    "the sections %s have no image in this copy", len(usable), len(published),
                    ", ".join(usable) or "none", ", ".join(lacking))
    if len(usable) < 2:
        raise InputError(f"protocol 'published' needs at least two of the published sections with an image; "
                         f"this copy has {', '.join(usable) or 'none'} (of {', '.join(published)})")
    return [Fold(i, tuple(t for t in usable if t != s), (s,)) for i, s in enumerate(usable)]


def leaking_patients(folds: list[Fold], patient_of: dict[str, str]) -> dict[int, list[str]]:
    """Per fold, the patients with sections on both sides."""
    out = {}
    for fold in folds:
        both = sorted({patient_of[s] for s in fold.train} & {patient_of[s] for s in fold.test})
        if both:
            out[fold.index] = both
    return out


def check_split(split: Split, patient_of: dict[str, str]) -> None:
    for fold in split.folds:
        for side, sections in (("training", fold.train), ("test", fold.test)):
            if not sections:
                raise InputError(f"split {split.path or split.protocol}: fold {fold.index} has no {side} "
                                 f"sections; every fold needs at least one on each side")
        unknown = [s for s in fold.train + fold.test if s not in patient_of]
        if unknown:
            raise InputError(f"split {split.path}: fold {fold.index} names section(s) {unknown} that the "
                             f"dataset does not have (with images)")
        if set(fold.train) & set(fold.test):
            raise LeakageError(f"split {split.path}: fold {fold.index} has section(s) "
                               f"{sorted(set(fold.train) & set(fold.test))} in both train and test")
    leaks = leaking_patients(split.folds, patient_of)
    # Whether leakage is allowed comes from the protocol, never from the file (which a user may edit).
    declared = parse_protocol(split.protocol)[0] in LEAKING_PROTOCOLS
    if leaks and not declared:
        detail = "; ".join(f"fold {i}: patient(s) {', '.join(p)}" for i, p in leaks.items())
        raise LeakageError(f"split {split.path or split.protocol} puts a patient's sections on both sides "
                           f"({detail}); refused. Use a patient-level protocol (lopo, patient-kfold:<k>), or "
                           f"loso or published, which declare this leakage.")


def protocol_folder_name(protocol: str) -> str:
    """The protocol as part of a file or folder name (``patient-kfold:5`` -> ``patient-kfold5``)."""
    return protocol.replace(":", "")


def split_path(splits_dir: Path, dataset: str, protocol: str, seed: int) -> Path:
    return Path(splits_dir) / f"{dataset}-{protocol_folder_name(protocol)}-seed{seed}.json"


def plan_split(splits_dir: Path, dataset: str, protocol: str, seed: int, patient_of: dict[str, str],
               published: tuple[str, ...] | None = None) -> Split:
    """The split for (dataset, protocol, seed): its file read and checked if present, else made and checked
    in memory only (``save_split`` writes it once the whole run is known to be able to start). Its leak
    status is computed from ``patient_of``, the patients the run actually uses, never taken from the file.
    ``published``: the dataset's published sections, for ``--protocol published``."""
    path = split_path(splits_dir, dataset, protocol, seed)
    if path.is_file():
        split = _read(path)
        if (split.dataset, split.protocol, split.seed) != (dataset, protocol, seed):
            raise InputError(f"{path}: holds dataset/protocol/seed {split.dataset}/{split.protocol}/{split.seed}, "
                             f"expected {dataset}/{protocol}/{seed}")
        check_split(split, patient_of)
        if split.edited:
            # A split is made once and every job records its hash: an edit afterwards would mix results
            # of two splits under one name. (Files made before the hash was recorded carry none.)
            raise InputError(f"{path}: edited after it was made (its dataset, protocol, seed and folds no "
                             f"longer match the content_sha256 recorded in it); restore it, or delete it and "
                             f"use a new --out folder for a new split")
    else:
        split = Split(dataset, protocol, seed, leaks_patients=False,
                      folds=make_folds(protocol, patient_of, seed, published), path=path, unsaved=True)
        check_split(split, patient_of)  # a refused split never reaches the disk
    used = sorted({s for fold in split.folds for s in fold.train + fold.test})
    split.patients = {s: patient_of[s] for s in used}
    split.leaks_patients = bool(leaking_patients(split.folds, patient_of))
    if split.unsaved:
        split.sha256 = hashlib.sha256(_encode(split)).hexdigest()
    return split


def save_split(split: Split) -> Split:
    """Write a split made by ``plan_split`` (a split read from its file is left as it is)."""
    if split.unsaved:
        _write(split.path, split)
        split.unsaved = False
    return split


def load_or_create_split(splits_dir: Path, dataset: str, protocol: str, seed: int,
                         patient_of: dict[str, str], published: tuple[str, ...] | None = None) -> Split:
    """The split file for (dataset, protocol, seed): read if present, else made and written once."""
    return save_split(plan_split(splits_dir, dataset, protocol, seed, patient_of, published))


def _encode(split: Split) -> bytes:
    doc = {"dataset": split.dataset, "protocol": split.protocol, "seed": split.seed,
           "leaks_patients": split.leaks_patients,
           "folds": [{"index": f.index, "train": list(f.train), "test": list(f.test)} for f in split.folds]}
    doc["content_sha256"] = _content_sha256(doc)
    if split.patients is not None:  # what the leak status was computed from (not part of the split's meaning)
        doc["patients"] = split.patients
    return (json.dumps(doc, indent=1) + "\n").encode()


def _write(path: Path, split: Split) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(_encode(split))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _content_sha256(doc: dict) -> str:
    """SHA-256 of what a split means (dataset, protocol, seed, folds), whatever the file's layout."""
    content = {k: doc[k] for k in ("dataset", "protocol", "seed", "folds")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> Split:
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
        folds = [Fold(int(f["index"]), tuple(f["train"]), tuple(f["test"])) for f in doc["folds"]]
        split = Split(doc["dataset"], doc["protocol"], int(doc["seed"]), bool(doc["leaks_patients"]), folds)
        recorded, actual = doc.get("content_sha256"), _content_sha256(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a valid split file ({exc})") from exc
    split.edited = recorded is not None and recorded != actual
    split.path = path
    split.sha256 = hashlib.sha256(raw).hexdigest()
    return split


# Validation held out of the training side for methods that choose an epoch or stop early: the share of the
# training patients (at least one) BLEEP's original held out of its training data (20%, drawn at random).
VALIDATION_FRACTION = 0.2
VALIDATION_SOURCES = ("training-patients", "test-fold")
DEFAULT_VALIDATION = "training-patients"


@dataclass(frozen=True)
class InnerSplit:
    """A fold's training side split into the sections a method trains on and those it validates on."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    unit: str  # "patient": whole patients held out; "section": the training side has one patient
    seed: int


def inner_validation_split(train_sections: tuple[str, ...], patient_of: dict[str, str], seed: int,
                           fold_index: int = 0, fraction: float = VALIDATION_FRACTION) -> InnerSplit:
    """Whole patients of the training side (``fraction`` of them, at least one and never all) drawn with the
    seed, or whole sections when the training side holds one patient only. The test fold takes no part: the
    draw depends on the training sections, the seed and the fold's index only."""
    sections = sorted(train_sections)
    patients = sorted({patient_of[s] for s in sections})
    rng = np.random.default_rng([seed, fold_index, 28])
    if len(patients) >= 2:
        n = min(len(patients) - 1, max(1, int(round(fraction * len(patients)))))
        held = {patients[i] for i in rng.choice(len(patients), n, replace=False)}
        validation = tuple(s for s in sections if patient_of[s] in held)
        unit = "patient"
    elif len(sections) >= 2:
        n = min(len(sections) - 1, max(1, int(round(fraction * len(sections)))))
        validation = tuple(sections[i] for i in sorted(rng.choice(len(sections), n, replace=False)))
        unit = "section"
    else:
        raise InputError(f"an inner validation split needs at least two training sections; this fold trains on "
                         f"{', '.join(sections) or 'none'} only")
    train = tuple(s for s in train_sections if s not in validation)
    return InnerSplit(train, validation, unit, seed)
