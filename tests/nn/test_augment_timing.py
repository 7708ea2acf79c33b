"""Batch augmentations, the prefetching batch reader and the timing helper."""
import numpy as np
import pytest
import torch

from bench.nn.augment import color_jitter, dihedral, random_dihedral, random_hflip, random_rotation
from bench.nn.batching import PatchBatches, to_tensor
from bench.run.timing import peak_memory, reset_peak_memory, timed


def _images(n=6, px=8):
    return torch.rand(n, 3, px, px, generator=torch.Generator().manual_seed(0))


def test_dihedral_gives_the_eight_symmetries_of_the_square():
    x = _images(1)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)
    assert torch.equal(dihedral(dihedral(x, 1), 3), x)  # four quarter turns


def test_random_augmentations_vary_per_sample_and_are_seeded():
    x = _images().repeat(1, 1, 1, 1)[:1].repeat(8, 1, 1, 1)  # eight copies of one image
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = random_dihedral(x, g1)
    assert torch.equal(a, random_dihedral(x, g2))
    assert len({tuple(v.flatten().tolist()) for v in a}) > 1, "samples must draw their own transform"
    jittered = color_jitter(x, 0.5, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered[0], jittered[1])
    assert torch.equal(color_jitter(x, 0, 0, 0), x)
    flipped = random_hflip(x, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(flipped, x.flip(-1))


def test_rotation_by_zero_is_identity_and_180_turns_the_patch():
    x = _images(2, 16)
    assert torch.allclose(random_rotation(x, 0.0), x, atol=1e-5)
    rotated = random_rotation(x, 180.0, torch.Generator().manual_seed(1))
    assert rotated.shape == x.shape and not torch.allclose(rotated, x)


def test_rotation_resamples_nearest_by_default_and_bilinear_on_request():
    levels = torch.tensor([0.25, 0.5, 0.75])
    x = levels[torch.randint(0, 3, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0))]
    nearest = random_rotation(x, 180.0, torch.Generator().manual_seed(1))  # torchvision's default
    assert torch.isin(nearest, torch.tensor([0.0, 0.25, 0.5, 0.75])).all(), "no value that was not there"
    bilinear = random_rotation(x, 180.0, torch.Generator().manual_seed(1), interpolation="bilinear")
    assert not torch.isin(bilinear, torch.tensor([0.0, 0.25, 0.5, 0.75])).all()
    with pytest.raises(ValueError, match="interpolation"):
        random_rotation(x, 10.0, interpolation="bicubic")


def test_patch_batches_keep_one_order_when_not_reshuffled():
    patches = np.zeros((40, 1, 1, 3), dtype=np.uint8)
    fixed = PatchBatches(patches, 8, shuffle=True, rng=np.random.default_rng(0), reshuffle=False)
    first = [idx.tolist() for idx, _ in fixed]
    assert [idx.tolist() for idx, _ in fixed] == first and sum(first, []) != list(range(40))
    moving = PatchBatches(patches, 8, shuffle=True, rng=np.random.default_rng(0))
    assert [idx.tolist() for idx, _ in moving] == first, "the first pass is the same draw either way"
    assert [idx.tolist() for idx, _ in moving] != first


def test_patch_batches_cover_every_row_once_in_a_seeded_order():
    patches = np.arange(50 * 2 * 2 * 3, dtype=np.uint8).reshape(50, 2, 2, 3)
    loader = PatchBatches(patches, 16, shuffle=True, rng=np.random.default_rng(0))
    rows = []
    for idx, batch in loader:
        assert np.array_equal(batch, patches[idx])
        rows.extend(idx.tolist())
    assert sorted(rows) == list(range(50)) and rows != list(range(50))
    again = [idx.tolist() for idx, _ in PatchBatches(patches, 16, shuffle=True, rng=np.random.default_rng(0))]
    assert sum(again, []) == rows
    assert 0 <= loader.wait_fraction <= 1 and loader.total_seconds > 0


def test_patch_batches_surface_reader_errors():
    class Broken:
        shape = (10, 2, 2, 3)

        def __len__(self):
            return 10

        def __getitem__(self, rows):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(PatchBatches(Broken(), 4))


def test_to_tensor_scales_to_unit_range_channels_first():
    x = to_tensor(np.full((2, 4, 4, 3), 255, np.uint8), "cpu")
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32 and torch.all(x == 1)


def test_timer_on_cpu_reports_positive_monotone_wall_time_and_memory():
    import time

    with timed("cpu") as short:
        time.sleep(0.01)
    with timed("cpu") as long:
        time.sleep(0.05)
    assert 0 < short.seconds < long.seconds
    assert (short.device, short.clock) == ("cpu", "wall")
    assert peak_memory("cpu")["peak_rss_mb"] > 0 and "peak_gpu_mb" not in peak_memory("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_timer_on_cuda_uses_events_and_reports_gpu_memory():
    x = torch.randn(2048, 2048, device="cuda")
    with timed("cuda") as t:
        (x @ x).sum().item()
    assert t.seconds > 0 and (t.device, t.clock) == ("cuda", "cuda-events")
    assert peak_memory("cuda")["peak_gpu_mb"] > 0


def test_peak_rss_after_a_reset_is_the_jobs_own_not_the_process_earlier_peak():
    reset_peak_memory("cpu")
    big = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MB resident: an earlier job's peak
    earlier = peak_memory("cpu")["peak_rss_mb"]
    del big
    reset_peak_memory("cpu")
    job = peak_memory("cpu")
    if job["peak_rss_scope"] == "process":
        pytest.skip("this system cannot restart the RSS high-water mark (/proc/self/clear_refs)")
    assert job["peak_rss_mb"] < earlier - 150
