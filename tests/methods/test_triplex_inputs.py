"""What TRIPLEX reads besides its patch: the 'cigar' ResNet-18 as a named local checkpoint (random
initialisation without it, recorded), and the grid embeddings of its 5 x 5 neighbour view."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from bench.data.embeddings import EmbeddingCache
from bench.data.patches import PatchStore
from bench.method import EmbeddingSpec
from bench.nn.encoders import Encoder, EncoderSpec, EncoderUnavailableError, load_encoder, register_encoder
from bench.run.embedding import SectionEmbedder


def test_cigar_loads_its_named_checkpoint_else_falls_back_to_random_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_WEIGHTS_DIR", str(tmp_path))
    missing = load_encoder("cigar", "auto")
    assert not missing.pretrained and missing.spec.reference == "random initialisation"
    with pytest.raises(EncoderUnavailableError, match="tenpercent_resnet18.ckpt"):
        load_encoder("cigar", "yes")
    # The release is a Lightning checkpoint: weights under 'state_dict', keys prefixed 'model.resnet.'.
    torch.manual_seed(3)
    resnet = torchvision.models.resnet18(weights=None)
    state = {f"model.resnet.{k}": v for k, v in resnet.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 10}, tmp_path / "tenpercent_resnet18.ckpt")
    found = load_encoder("cigar", "auto")
    assert found.pretrained and found.checkpoint == str(tmp_path / "tenpercent_resnet18.ckpt")
    assert torch.equal(found.model.conv1.weight, resnet.conv1.weight)
    assert torch.equal(found.model.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    assert not load_encoder("cigar", "no").pretrained  # 'no' never reads it


def mean_colour(pretrained: str = "no") -> Encoder:
    """Embeds a tile as its mean red, green and blue: which tile landed where can be read off."""
    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    return Encoder(EncoderSpec("mean-colour", 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None, 3, "custom"), Mean(),
                   False)


def test_grid_embeddings_are_the_tiles_row_by_row_with_the_spot_in_the_centre(synthetic, tmp_path):
    register_encoder("mean-colour", mean_colour)
    section = synthetic[sorted(synthetic.sections)[0]]
    store, cache = PatchStore(tmp_path), EmbeddingCache(tmp_path)
    grid = SectionEmbedder(EmbeddingSpec("mean-colour", 60.0, px=8, grid=3), store, cache).section("synthetic",
                                                                                                  section)
    single = SectionEmbedder(EmbeddingSpec("mean-colour", 60.0, px=8), store, cache).section("synthetic", section)
    assert grid.shape == (section.counts.n_obs, 9 * 3)
    tiles = np.asarray(grid).reshape(-1, 9, 3)
    # The centre tile is the spot's own window (the same pixels up to resampling of a 3x wider cut).
    assert np.corrcoef(tiles[:, 4].ravel(), np.asarray(single).ravel())[0, 1] > 0.95
    # Adjacent spots: the tile right of a spot's centre is near the centre tile of its right-hand neighbour only
    # if the tiles run row by row (k = row, m = column); check the order against the image directly.
    from bench.data.patches import PatchSpec, cut_patches

    windows, _ = cut_patches(section, PatchSpec(window_um=180.0, px=24))
    expected = windows.reshape(-1, 3, 8, 3, 8, 3).mean(axis=(2, 4)) / 255.0  # (n, row, col, rgb)
    np.testing.assert_allclose(tiles, expected.reshape(-1, 9, 3), atol=1e-5)
