"""Assemble what methods receive for one fold: the panel, the targets and (when asked) the patches and the
frozen-encoder embeddings.

Everything fold-dependent is fit on the training sections only. The same fold gives the same panel
and targets to every method, which is what makes their scores comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from bench.data.dataset import Dataset
from bench.data.embeddings import EmbeddingCache
from bench.data.patches import PatchSpec, PatchStore, StackedPatches
from bench.data.preprocess import DEFAULT_TARGET, PanelSpec, normalise, panel_counts, select_panel
from bench.data.splits import VALIDATION_SOURCES, Fold, inner_validation_split
from bench.method import SpotData
from bench.run.embedding import SectionEmbedder

LABEL_COLUMNS = ("pathology_label", "cluster_label")


@dataclass
class FoldInputs:
    genes: list[str]
    train: SpotData
    test: SpotData
    truth: np.ndarray  # (n_test_spots, n_genes) targets the predictions are scored against
    # Per test spot, the domain annotations used to score clustering (``LABEL_COLUMNS``; '' where missing).
    # Kept out of SpotData: methods never see them.
    test_labels: dict[str, np.ndarray] = field(default_factory=dict)
    n_train_available: int = 0  # training spots of the fold before any --max-train-spots subsample
    # The validation set of a method that asks for one (``Method.wants_validation``), with its expression:
    # whole training patients held out of ``train`` (``validation_source`` "training-patients"), or, in a
    # reproduction of a published run that did so, the test fold itself ("test-fold": leaks, and says so).
    validation: SpotData | None = None
    validation_sections: tuple[str, ...] = ()
    validation_source: str | None = None
    validation_unit: str | None = None
    # Raw counts of the test spots x panel genes: the AUCs at count cut-offs score against them. Kept out
    # of SpotData (methods never see them, unless a positive control declares it needs the test truth).
    truth_counts: np.ndarray | None = None


def _side(dataset: Dataset, sections: tuple[str, ...], genes: list[str], store: PatchStore | None,
          patch_spec: PatchSpec | None, with_counts: bool, embedder: SectionEmbedder | None = None,
          target: str = DEFAULT_TARGET, with_totals: bool = False) -> SpotData:
    parts = []
    if embedder is not None:  # the next sections' patches are cut while this one's are embedded
        embedder.prefetch(dataset.name, [dataset[sid] for sid in sections])
    for sid in sections:
        section = dataset[sid]
        adata = section.counts
        raw = panel_counts(adata, genes)
        array = adata.obs[["array_x", "array_y"]].to_numpy(dtype=np.int64)
        parts.append({
            "section": np.full(adata.n_obs, sid, dtype=object),
            "spot": adata.obs_names.to_numpy(dtype=object),
            "array": array,
            "pixel": adata.obs[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64),
            "expression": normalise(raw, target, array),  # per section: the per-gene target's median is the section's
            "counts": raw if with_counts else None,
            # Sequencing depth: the spot's count over ALL genes of the section, not only the panel's.
            "total_counts": _total_counts(adata) if with_totals else None,
            "patches": store.patches(dataset.name, section, patch_spec) if patch_spec is not None else None,
            "um_per_px": section.um_per_px,
            "embeddings": embedder.section(dataset.name, section) if embedder is not None else None,
        })

    def cat(key):
        if parts[0][key] is None:
            return None
        if key in ("patches", "embeddings"):  # stay on disk: rows are read when a method asks for them
            return StackedPatches([p[key] for p in parts])
        return np.concatenate([p[key] for p in parts])

    return SpotData(
        genes=genes,
        section_ids=cat("section"),
        spot_ids=cat("spot"),
        array_coords=cat("array"),
        pixel_coords=cat("pixel"),
        patches=cat("patches"),
        expression=cat("expression"),
        counts=cat("counts"),
        total_counts=cat("total_counts"),
        um_per_px={sid: p["um_per_px"] for sid, p in zip(sections, parts)},
        embeddings=cat("embeddings"),
    )


def _total_counts(adata) -> np.ndarray:
    return np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()


def fold_panel(dataset: Dataset, fold: Fold, panel: PanelSpec) -> list[str]:
    train = [dataset[s].counts for s in fold.train]
    every = [dataset[s].counts for s in fold.train + fold.test]
    return select_panel(panel, train, every, published_panel=dataset.published_panel)


def build_fold_inputs(dataset: Dataset, fold: Fold, genes: list[str], store: PatchStore | None,
                      patch_spec: PatchSpec | None, needs_raw_counts: bool = False,
                      needs_test_truth: bool = False, embedder: SectionEmbedder | None = None,
                      target: str = DEFAULT_TARGET, needs_total_counts: bool = False,
                      max_train_spots: int | None = None, seed: int = 0,
                      validation_source: str | None = None, patient_of: dict[str, str] | None = None
                      ) -> FoldInputs:
    """``validation_source`` (None: no validation set): "training-patients" holds whole patients of the
    training side out as the validation set (``inner_validation_split``, drawn with ``seed``; ``patient_of``:
    section -> patient), "test-fold" passes the test sections with their truth (a published run's leak,
    reproduced on purpose). The training cap applies to the training sections only.
    ``target``: see bench.data.preprocess.TARGETS. ``needs_total_counts``: give both sides each spot's
    total count over all genes (``SpotData.total_counts``; the depth control reads the test side's).
    ``max_train_spots``: train on that many training spots drawn with ``seed`` (the same for every method
    of the fold), in their original order; the test side is never subsampled."""
    side = dict(embedder=embedder, target=target, with_totals=needs_total_counts)
    train_sections, validation_sections, unit = fold.train, (), None
    if validation_source == "training-patients" and len(fold.train) < 2:
        # Nothing can be held out of one section: the method trains without a validation set (and says so).
        unit = "none: the training side is one section"
    elif validation_source == "training-patients":
        inner = inner_validation_split(fold.train, patient_of or {}, seed, fold.index)
        train_sections, validation_sections, unit = inner.train, inner.validation, inner.unit
    elif validation_source == "test-fold":
        validation_sections, unit = fold.test, "test fold"
    elif validation_source is not None:
        raise ValueError(f"validation source {validation_source!r} not understood; valid: "
                         f"{', '.join(VALIDATION_SOURCES)}")
    train = _side(dataset, train_sections, genes, store, patch_spec, needs_raw_counts, **side)
    n_available = len(train)
    if max_train_spots is not None and n_available > max_train_spots:
        rows = np.sort(np.random.default_rng([seed, fold.index]).choice(n_available, max_train_spots,
                                                                          replace=False))
        train = train.subset(rows)
    test = _side(dataset, fold.test, genes, store, patch_spec, True, **side)
    truth, truth_counts = test.expression, test.counts
    if not needs_raw_counts:
        test.counts = None
    validation = None
    if validation_source == "test-fold":
        validation = replace(test)  # a shallow copy: hiding the truth from ``test`` below leaves it here
    elif validation_sections:
        validation = _side(dataset, validation_sections, genes, store, patch_spec, needs_raw_counts, **side)
    if not needs_test_truth:
        # Only positive controls may see the held-out truth (or counts, which would reveal it).
        test.expression = None
        test.counts = None
    return FoldInputs(genes, train, test, truth, section_labels(dataset, fold.test), n_train_available=n_available,
                      validation=validation, validation_sections=tuple(validation_sections),
                      validation_source=validation_source if validation is not None else None,
                      validation_unit=unit,
                      truth_counts=truth_counts)


def method_fold_inputs(method, dataset: Dataset, fold: Fold, genes: list[str], store: PatchStore,
                       pretrained: str = "auto", device: str = "cpu", target: str = DEFAULT_TARGET,
                       max_train_spots: int | None = None, seed: int = 0,
                       validation_source: str = "training-patients"
                       ) -> tuple[FoldInputs, SectionEmbedder | None]:
    """``build_fold_inputs`` with what the method declares: its patches, raw counts, the held-out truth (for
    positive controls), the spots' total counts (for controls that declare ``needs_total_counts``) and its
    frozen-encoder embeddings (cached beside the patches in the store's folder); ``target``,
    ``max_train_spots`` and ``seed``: the run's (see ``build_fold_inputs``); ``validation_source``: where the
    validation set of a method that wants one comes from (the run's ``validation``).
    Returns the inputs and the embedder (None when the method asked for no embeddings)."""
    request = method.embedding_spec()
    embedder = None
    if request is not None:
        embedder = SectionEmbedder(request, store, EmbeddingCache(store.cache_dir), pretrained, device, seed=seed)
    inputs = build_fold_inputs(dataset, fold, genes, store, method.patch_spec(),
                               needs_raw_counts=method.needs_raw_counts, needs_test_truth=method.needs_test_truth,
                               embedder=embedder, target=target, needs_total_counts=method.needs_total_counts,
                               max_train_spots=max_train_spots, seed=seed,
                               validation_source=validation_source if method.wants_validation() else None,
                               patient_of={s: str(dataset[s].patient_id) for s in fold.train})
    return inputs, embedder


def section_labels(dataset: Dataset, sections: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The ``LABEL_COLUMNS`` of each spot of these sections, in spot order, as strings ('' where missing)."""
    out = {}
    for column in LABEL_COLUMNS:
        parts = []
        for sid in sections:
            obs = dataset[sid].counts.obs
            values = obs[column] if column in obs else pd.Series(np.nan, index=obs.index)
            parts.append(values.astype(object).where(values.notna(), "").astype(str).to_numpy())
        out[column] = np.concatenate(parts).astype(str) if parts else np.array([], dtype=str)
    return out
