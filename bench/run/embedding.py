"""Frozen-encoder embeddings for one job: the encoder a method asked for, run once per section and cached.

The job builds one ``SectionEmbedder`` when its method declares an ``embedding_spec``; fold inputs ask it for
each section's embeddings. The encoder is loaded once per job (its weights' SHA-256 is part of the cache
key); the patches come from the patch store at the encoder's input size, cut from the method's window or,
with ``window_um="encoder"``, from the encoder's own field of view resampled from each section's µm/px.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from bench.data.dataset import Section
from bench.data.embeddings import EmbeddingCache
from bench.data.patches import PatchSpec, PatchStore
from bench.errors import InputError
from bench.method import EmbeddingSpec
from bench.nn.encoders import Encoder, describe, load_encoder

log = logging.getLogger(__name__)


class SectionEmbedder:
    def __init__(self, request: EmbeddingSpec, store: PatchStore, cache: EmbeddingCache, pretrained: str = "auto",
                 device: str = "cpu", batch_size: int = 64, encoder: Encoder | None = None):
        self.request, self.store, self.cache = request, store, cache
        self.device, self.batch_size = device, batch_size
        self.encoder = encoder or load_encoder(request.encoder, pretrained)
        self.encoder.to(device)
        self.seconds = 0.0  # spent embedding (cache hits cost nothing here)
        self.px = request.px or self.encoder.spec.px
        self.patch_spec = PatchSpec(window_um=self.window_um(), px=self.px)

    def window_um(self) -> float:
        if self.request.window_um != "encoder":
            return float(self.request.window_um)
        if self.encoder.spec.window_um is None:
            raise InputError(f"encoder {self.encoder.spec.name} declares no native magnification, so "
                             f"window_um='encoder' has no meaning for it; give the window in µm "
                             f"(e.g. --set <method>.window_um=165)")
        return self.encoder.spec.window_um

    def section(self, dataset_name: str, section: Section) -> np.ndarray:
        """(n_spots, dim) float32 embeddings of the section's spots, in spot order; memory-mapped."""
        patches = self.store.patches(dataset_name, section, self.patch_spec)
        key = self.store.key(dataset_name, section, self.patch_spec)

        def compute() -> np.ndarray:
            start = time.perf_counter()
            out = self.encoder.embed(patches, self.device, self.batch_size, px=self.px)
            self.seconds += time.perf_counter() - start
            log.info("embedded %d spots of %s with %s (%.1f s)", len(out), section.section_id,
                     self.encoder.spec.name, time.perf_counter() - start)
            return out

        return self.cache.embeddings(dataset_name, key, self.encoder.identity(self.px), len(patches), compute)

    def facts(self) -> dict:
        """What a job records about its embeddings (result.json facts, MLflow, the report)."""
        d = describe(self.encoder)
        return {"encoder": d["name"], "encoder_weights_sha256": d["weights_sha256"],
                "encoder_pretrained": d["pretrained"], "encoder_checkpoint": d["checkpoint"],
                "encoder_window_um": self.patch_spec.window_um, "encoder_px": self.patch_spec.px,
                "encoder_um_per_px": d["um_per_px"], "embedding_seconds": self.seconds}
