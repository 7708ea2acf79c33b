"""One job, ``(dataset, setting, fold, method, seed)``, and the function that runs it anywhere.

``execute_job(spec)`` is the same function under every executor (in this process, in a local worker
process, or inside a SLURM job): it loads what it needs from paths in the spec, trains the method, writes
the job's folder atomically (predictions, truth, counts), and only then scores the predictions with the
headline Pearson r it returns for the driver to log. Every other metric is the evaluation's: a metric that
fails there never costs a training. It never touches the tracking store (the driver logs each result after
collecting it; see bench/run/runner.py), so any number of jobs may finish at once.

A job is complete when its folder holds a ``COMPLETE`` record with the SHA-256 of every file it wrote
(bench/records.py); anything else (a folder left by a killed job, a damaged file) is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import Dataset
from bench.data.patches import PatchStore
from bench.data.splits import Fold
from bench.evaluation.evaluate import folder_headline_scores, headline_scores
from bench.evaluation.metrics import gene_stats
from bench.evaluation.published import morans_i_by_section
from bench.method import Runtime, validate_predictions
from bench.nn.torch_utils import seed_everything
from bench.records import JobKey, Setting, job_is_complete, write_job_folder
from bench.run.config import BenchConfig, make_method, planned_params
from bench.run.inputs import method_fold_inputs
from bench.run.system_metrics import SystemSampler
from bench.run.timing import peak_memory, reset_peak_memory, timed


@dataclass
class JobSpec:
    """Everything a job needs, small and picklable: settings, which fold, which genes."""

    config: dict  # asdict(BenchConfig), resolved
    key: JobKey
    fold: Fold
    genes: list[str]
    split_path: str
    split_sha256: str
    split_leaks_patients: bool
    threads: int | None = None  # torch threads in a worker process (None: leave torch's default)
    mlflow_run_id: str | None = None  # made by the driver; saved in result.json so evaluation finds it


def job_config_hash(config: BenchConfig, params: dict) -> str:
    """What makes a job's result what it is, beyond its key (paths, executors and trackers excluded):
    its setting, the method's parameters (``method_params``) and how it ran."""
    ident = {**Setting.of(config).identity(), "params": params, "pretrained": config.pretrained,
             "device": config.device.split(":")[0]}
    if config.max_train_spots is not None:  # every spot (the default before the cap existed) is left out
        ident["max_train_spots"] = int(config.max_train_spots)
    if config.threads is not None:  # results depend on the thread count; the default is left out of the hash
        ident["threads"] = int(config.threads)  # so results made before this setting existed stay valid
    if config.data_options:  # another counts layer or label column is other data (left out when none, as above)
        ident["data_options"] = dict(config.data_options)
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def execute_job(spec: JobSpec, dataset: Dataset | None = None) -> dict:
    """Train one method on one fold, write the job's folder atomically, then score it; return its result
    with the headline ``scores``.

    ``dataset``: the driver's loaded dataset when the job runs in its process (a worker process loads
    its own). A job found complete (e.g. a SLURM job requeued after it finished) returns the saved result.
    The method is built here, once per job, and nowhere else in the run (validation aside)."""
    config = BenchConfig(**spec.config)
    key = spec.key
    folder = key.folder(config.out)
    config_hash = job_config_hash(config, planned_params(config, key.method))
    if job_is_complete(folder, config_hash):
        return saved_result(folder)
    method = make_method(config, key.method)
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    if dataset is None:
        from bench.data.locations import load_dataset

        dataset = load_dataset(config.dataset, Path(config.data_dir), config.data_options)
    store = PatchStore(Path(config.cache_dir))
    genes = list(spec.genes)
    seed_everything(key.seed)
    history: list[dict] = []  # training curves, logged by the driver with their steps

    def log_metric(name, value, step=None):
        history.append({"name": name, "value": float(value), "step": int(step or 0)})

    method.runtime = Runtime(seed=key.seed, device=config.device, pretrained=config.pretrained,
                             progress=config.progress, log_metric=log_metric)
    inputs, embedder = method_fold_inputs(method, dataset, spec.fold, genes, store, config.pretrained,
                                          config.device, target=config.target,
                                          max_train_spots=config.max_train_spots, seed=key.seed,
                                          validation_source=config.validation)
    reset_peak_memory(config.device)
    with SystemSampler() as system:
        with timed(config.device) as fit_time:
            if inputs.validation is not None:
                method.fit(inputs.train, validation=inputs.validation)
            else:
                method.fit(inputs.train)
        with timed(config.device) as predict_time:
            raw_pred = method.predict(inputs.test)
    pred = validate_predictions(raw_pred, len(inputs.test), len(genes), key.method, job=str(key))
    fit_s, predict_s = fit_time.seconds, predict_time.seconds

    train_stats = gene_stats(inputs.train.expression)  # for HVG: variance of the training targets
    # For SVG: Moran's I of the training targets on each training section's spot graph, averaged over the
    # sections (never the test's). Under --max-train-spots, over the subsampled training spots.
    train_moran = morans_i_by_section(inputs.train.expression, inputs.train.array_coords, inputs.train.section_ids)
    timing = {"fit_seconds": fit_s, "predict_seconds": predict_s,
              "train_spots_per_second": len(inputs.train) / fit_s if fit_s > 0 else None,
              "predict_spots_per_second": len(inputs.test) / predict_s if predict_s > 0 else None,
              **peak_memory(config.device), "device": fit_time.device, "clock": fit_time.clock,
              "torch_threads": torch.get_num_threads(),
              # Forward passes of a frozen encoder for sections not yet in the embedding cache (0 on a cache hit).
              "embedding_seconds": embedder.seconds if embedder is not None else 0.0}
    facts = {"pretrained": False, **method.runtime.facts}
    if embedder is not None:
        facts.update(embedder.facts())
        if "pretrained" not in method.runtime.facts:  # the frozen encoder's weights are what "pretrained" means
            facts["pretrained"] = embedder.encoder.pretrained
    result = {"job": key.record(), "job_key": str(key), "timing": timing, "facts": facts,
              "kind": method.kind, "profile": config.profile, "target": config.target, "panel": config.panel,
              "n_train_spots": len(inputs.train), "n_test_spots": len(inputs.test),
              "n_train_spots_available": inputs.n_train_available, "max_train_spots": config.max_train_spots,
              "train_sections": list(spec.fold.train), "test_sections": list(spec.fold.test),
              # The patient of each test section: the evaluation's unit of replication (bench/evaluation/patients.py).
              "test_patients": {sid: str(dataset[sid].patient_id) for sid in spec.fold.test},
              "split_file": spec.split_path, "split_sha256": spec.split_sha256,
              "split_leaks_patients": spec.split_leaks_patients,
              # The validation set a method stopped early or chose its epoch on: its sections, where they came
              # from, and whether it was the test fold (a reproduced published leak).
              "validation_source": inputs.validation_source,
              "validation_sections": list(inputs.validation_sections), "validation_unit": inputs.validation_unit,
              "validation_seed": key.seed if inputs.validation_source == "training-patients" else None,
              "validation_leaks_test": inputs.validation_source == "test-fold",
              "patients_from": dataset.patients_from, "patients_unknown": dataset.patients_unknown,
              "data_options": dict(config.data_options),
              "panel_sha256": hashlib.sha256("\n".join(genes).encode()).hexdigest(),
              "mlflow_run_id": spec.mlflow_run_id, "history": history, "system_metrics": system.samples,
              "system_metrics_missing": system.missing, "executor": config.executor, "host": os.uname().nodename}
    job_config = {"benchmark": asdict(config), "method": key.method, "method_params": method.get_params(),
                  "patch_spec": asdict(method.patch_spec()) if method.patch_spec() else None,
                  "embedding_spec": asdict(method.embedding_spec()) if method.embedding_spec() else None,
                  "config_hash": config_hash}
    write_job_folder(folder, config_hash, {
        "predictions.npz": lambda p: np.savez_compressed(
            p, prediction=pred, truth=inputs.truth, genes=np.array(genes),
            spot_ids=inputs.test.spot_ids.astype(str), section_ids=inputs.test.section_ids.astype(str),
            array_coords=inputs.test.array_coords,
            **({"counts": inputs.truth_counts} if inputs.truth_counts is not None else {}),
            **{name: labels.astype(str) for name, labels in inputs.test_labels.items()}),
        "train_gene_stats.csv": lambda p: pd.DataFrame({
            "gene": genes, "train_mean": train_stats["mean"], "train_variance": train_stats["variance"],
            "train_morans_i": train_moran,
        }).to_csv(p, index=False),
        "result.json": lambda p: p.write_text(json.dumps(result, indent=1, default=str)),
        "config.json": lambda p: p.write_text(json.dumps(job_config, indent=1, default=str)),
        "panel.txt": lambda p: p.write_text("\n".join(genes) + "\n"),
    })
    # Written first, scored after: the headline score the driver logs, from the evaluation's own function.
    result["scores"] = headline_scores(inputs.truth, pred, train_stats["variance"], train_moran)
    return result



def saved_result(folder: Path) -> dict:
    """The result of a complete job folder with its headline ``scores`` (saved in result.json by jobs made
    before scoring followed the write; computed from the folder's predictions otherwise)."""
    result = json.loads((Path(folder) / "result.json").read_text())
    if "scores" not in result:
        result["scores"] = folder_headline_scores(folder)
    return result
