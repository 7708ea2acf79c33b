"""Complete job folders written directly (no training): what `bench evaluate` and `bench report` read.

Each patient has its own leave-one-patient-out fold; every method predicts ``quality * truth + noise``, so
a planted ranking of methods holds on every metric. Raw counts are Poisson around a spatial pattern, so
spots have array coordinates with spatially autocorrelated genes (Moran's I, SVG)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import JobKey, write_job_folder

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
            key = JobKey("synthetic", "lopo", fold, method, 0)
            result = {"job": {"dataset": "synthetic", "protocol": "lopo", "fold": fold, "method": method, "seed": 0},
                      "job_key": str(key), "kind": KINDS.get(method, "method"), "scores": {},
                      "timing": {"fit_seconds": 1.0, "predict_seconds": 0.5}, "facts": {},
                      "test_patients": {s: patient for s in sections}}
            train = pd.DataFrame({"gene": genes, "train_mean": level, "train_variance": level * 1.1,
                                  "train_morans_i": np.linspace(0.9, 0.0, n_genes)})
            write_job_folder(key.folder(out), "synthetic", {
                "predictions.npz": lambda p, pred=pred, truth=truth, counts=counts, coords=coords,
                section_ids=section_ids: np.savez_compressed(
                    p, prediction=pred.astype(np.float32), truth=truth, genes=np.array(genes),
                    spot_ids=np.array([f"s{i}" for i in range(len(truth))]), section_ids=section_ids,
                    array_coords=coords, counts=counts),
                "per_gene.csv": lambda p: p.write_text("gene\n"),
                "train_gene_stats.csv": lambda p, train=train: train.to_csv(p, index=False),
                "result.json": lambda p, result=result: p.write_text(json.dumps(result)),
                "config.json": lambda p: p.write_text("{}"),
                "panel.txt": lambda p: p.write_text("\n".join(genes) + "\n"),
            })
            folders.append(key.folder(out))
    return folders
