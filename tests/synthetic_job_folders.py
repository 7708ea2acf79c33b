"""Complete job folders written directly (no training): what `bench evaluate` and `bench report` read.

Each patient has its own leave-one-patient-out fold; every method predicts ``quality * truth + noise``, so
a planted ranking of methods holds on every metric. Raw counts are Poisson around a spatial pattern, so
spots have array coordinates with spatially autocorrelated genes (Moran's I, SVG)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import JobKey, Setting, write_job_folder

LOPO = Setting("lopo", "top-mean:30")  # the setting of the hand-made runs

KINDS = {"mean": "negative-control", "depth-oracle": "diagnostic-control", "spatial-oracle": "positive-control"}


def write_run(out: Path, methods: dict[str, float], n_patients: int = 3, sections_per_patient: int = 2,
              spots_per_section: int = 60, n_genes: int = 30, seed: int = 0) -> list[Path]:
    """``methods``: name -> quality in [0, 1] (0: noise only; ``mean`` predicts the training mean)."""
    rng = np.random.default_rng(seed)
    genes = [f"G{j}" for j in range(n_genes)]
    width = int(np.ceil(np.sqrt(spots_per_section)))
    grid = np.array([(x, y) for x in range(width) for y in range(width)])[:spots_per_section]
    folders = []
    for fold in range(n_patients):
        patient = f"P{fold}"
        sections = [f"{patient}_{k}" for k in range(sections_per_patient)]
        coords = np.vstack([grid] * sections_per_patient)
        section_ids = np.repeat(sections, spots_per_section)
        level = rng.gamma(1.0, 2.0, n_genes)
        pattern = 1.0 + 0.8 * np.sin(coords[:, :1] / 2.0 + rng.uniform(0, 6, n_genes))
        counts = rng.poisson(level * pattern).astype(np.int64)
        truth = np.log1p(counts).astype(np.float32)
        for method, quality in methods.items():
            if method == "mean":
                pred = np.tile(truth.mean(axis=0), (len(truth), 1))
            else:
                pred = quality * truth + rng.normal(0.0, 0.5, truth.shape) + 0.3
            train = pd.DataFrame({"gene": genes, "train_mean": level, "train_variance": level * 1.1,
                                  "train_morans_i": np.linspace(0.9, 0.0, n_genes)})
            folders.append(write_job(out, JobKey("synthetic", LOPO, fold, method, 0), truth, pred, section_ids,
                                     {s: patient for s in sections}, kind=KINDS.get(method, "method"),
                                     genes=genes, train=train, counts=counts, coords=coords, labels=False))
    return folders


def write_job(out: Path, key: JobKey, truth: np.ndarray, pred: np.ndarray, section_ids, test_patients: dict,
              *, kind: str = "method", genes: list[str] | None = None, train: pd.DataFrame | None = None,
              counts: np.ndarray | None = None, coords: np.ndarray | None = None, labels: bool = True,
              result: dict | None = None) -> Path:
    """One complete job folder, as a job writes it, from a truth and a prediction: the one writer the
    hand-made runs of the evaluation and report tests share. ``result``: extra result.json entries (e.g. a
    leak flag); ``labels``: alternating pathology/cluster labels for the clustering metrics; ``counts`` and
    ``coords``: raw counts and array positions (Moran's I, SVG)."""
    genes = genes or [f"g{j}" for j in range(truth.shape[1])]
    section_ids = np.asarray(section_ids)
    if train is None:
        train = pd.DataFrame({"gene": genes, "train_mean": 0.0, "train_variance": np.arange(len(genes))})
    record = {"job": key.record(),
              "job_key": str(key), "kind": kind, "mlflow_run_id": None, "scores": {},
              "test_sections": sorted(set(section_ids.tolist())), "test_patients": test_patients,
              "timing": {"fit_seconds": 1.0, "predict_seconds": 0.5}, "facts": {"pretrained": False},
              **(result or {})}
    arrays = {"prediction": np.asarray(pred, dtype=np.float32), "truth": np.asarray(truth, dtype=np.float32),
              "genes": np.array(genes), "spot_ids": np.array([f"s{i}" for i in range(len(truth))]),
              "section_ids": section_ids}
    if labels:
        arrays["pathology_label"] = arrays["cluster_label"] = np.where(np.arange(len(truth)) % 2 == 0, "a", "b")
    if counts is not None:
        arrays["counts"] = counts
    if coords is not None:
        arrays["array_coords"] = coords
    write_job_folder(key.folder(out), key.dataset, {
        "predictions.npz": lambda p: np.savez_compressed(p, **arrays),
        "train_gene_stats.csv": lambda p: train.to_csv(p, index=False),
        "result.json": lambda p: p.write_text(json.dumps(record)),
        "config.json": lambda p: p.write_text("{}"),
        "panel.txt": lambda p: p.write_text("\n".join(genes) + "\n"),
    })
    return key.folder(out)
