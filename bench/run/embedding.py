"""Frozen-encoder embeddings for one job: the encoder a method asked for, run once per section and cached.

The job builds one ``SectionEmbedder`` when its method declares an ``embedding_spec``; fold inputs ask it for
each section's embeddings. The encoder is loaded once per job (its weights' SHA-256 is part of the cache
key); the patches come from the patch store at the encoder's input size, cut from the method's window or,
with ``window_um="encoder"``, from the encoder's own field of view resampled from each section's µm/px.
A ``grid`` request (TRIPLEX's neighbour view) cuts one window grid times as wide around each spot, in memory
one section at a time (never stored: at 5 x 224 px it would be 25 times the spot's patch file), and embeds its
grid x grid tiles.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from bench.data.dataset import Section
from bench.data.embeddings import EmbeddingCache
from bench.data.patches import PatchSpec, PatchStore, cut_patches
from bench.errors import InputError
from bench.method import EmbeddingSpec
from bench.nn.encoders import Encoder, describe, load_encoder

log = logging.getLogger(__name__)


class SectionEmbedder:
    def __init__(self, request: EmbeddingSpec, store: PatchStore, cache: EmbeddingCache, pretrained: str = "auto",
                 device: str = "cpu", batch_size: int = 64, encoder: Encoder | None = None, seed: int = 0):
        self.request, self.store, self.cache = request, store, cache
        self.device, self.batch_size = device, batch_size
        # seed: the job's; an encoder without weights is initialised from it and its name alone, so every
        # fold of a seed shares one encoder (and the embeddings cached by its weights' hash).
        self.encoder = encoder or load_encoder(request.encoder, pretrained, seed)
        self.encoder.to(device)
        self.seconds = 0.0  # spent embedding (cache hits cost nothing here)
        self.px = request.px or self.encoder.spec.px
        self.grid = request.grid
        self.patch_spec = PatchSpec(window_um=self.window_um() * self.grid, px=self.px * self.grid)
        # Patch files being cut ahead (prefetch), by patch key: one thread, so that cutting the next section
        # (decoding its image, resampling its windows) overlaps the forward passes over this one.
        self._cutter: ThreadPoolExecutor | None = None
        self._cutting: dict[str, Future] = {}

    def prefetch(self, dataset_name: str, sections: list[Section]) -> None:
        """Start cutting these sections' patch files (the cache's, when not there yet) in a background thread,
        in order; ``section`` then takes each from there. Errors (bad input) are raised by ``section``."""
        if self.grid != 1:  # grid windows are cut in memory, per section, by section() itself
            return
        for section in sections:
            key = self.store.key(dataset_name, section, self.patch_spec)
            if key not in self._cutting:
                self._cutter = self._cutter or ThreadPoolExecutor(max_workers=1, thread_name_prefix="cut-patches")
                self._cutting[key] = self._cutter.submit(self.store.patches, dataset_name, section, self.patch_spec)

    def window_um(self) -> float:
        if self.request.window_um != "encoder":
            return float(self.request.window_um)
        if self.encoder.spec.window_um is None:
            raise InputError(f"encoder {self.encoder.spec.name} declares no native magnification, so "
                             f"window_um='encoder' has no meaning for it; give the window in µm "
                             f"(e.g. --set <method>.window_um=165)")
        return self.encoder.spec.window_um

    def section(self, dataset_name: str, section: Section) -> np.ndarray:
        """(n_spots, dim) float32 embeddings of the section's spots, in spot order (``grid² x dim`` per spot
        for a grid request); memory-mapped."""
        key = self.store.key(dataset_name, section, self.patch_spec)
        if self.grid == 1:
            cutting = self._cutting.pop(key, None)
            patches = cutting.result() if cutting else self.store.patches(dataset_name, section, self.patch_spec)
            n_spots = len(patches)
        else:
            patches, n_spots = None, section.counts.n_obs

        def compute() -> np.ndarray:
            start = time.perf_counter()
            if self.grid == 1:
                out = self.encoder.embed(patches, self.device, self.batch_size, px=self.px)
            else:
                out = self._embed_grid(section)
            self.seconds += time.perf_counter() - start
            log.info("embedded %d spots of %s with %s (%.1f s)", len(out), section.section_id,
                     self.encoder.spec.name, time.perf_counter() - start)
            return out

        identity = self.encoder.identity(self.px)
        if self.grid > 1:  # left out when 1, so the cache entries made before grids existed stay valid
            identity["grid"] = self.grid
        return self.cache.embeddings(dataset_name, key, identity, n_spots, compute)

    def _embed_grid(self, section: Section) -> np.ndarray:
        """Each spot's grid x grid tiles (row by row from the top left), embedded and concatenated."""
        windows, _ = cut_patches(section, self.patch_spec)
        g, px = self.grid, self.px
        # (n, g*px, g*px, 3) -> (n, g, px, g, px, 3) -> (n, g, g, px, px, 3): tile (k, m) = rows k, columns m.
        tiles = windows.reshape(len(windows), g, px, g, px, 3).transpose(0, 1, 3, 2, 4, 5)
        tiles = tiles.reshape(len(windows) * g * g, px, px, 3)
        return self.encoder.embed(tiles, self.device, self.batch_size, px=px).reshape(len(windows), -1)

    def facts(self) -> dict:
        """What a job records about its embeddings (result.json facts, MLflow, the report)."""
        d = describe(self.encoder)
        return {"encoder": d["name"], "encoder_weights_sha256": d["weights_sha256"],
                "encoder_pretrained": d["pretrained"], "encoder_checkpoint": d["checkpoint"],
                "encoder_window_um": self.patch_spec.window_um / self.grid, "encoder_px": self.px,
                **({"encoder_grid": self.grid} if self.grid > 1 else {}),
                "encoder_um_per_px": d["um_per_px"], "embedding_seconds": self.seconds}
