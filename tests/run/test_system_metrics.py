"""Per-job system metrics: MLflow's samplers, run in the job's process, kept with the job's result."""
import time

from bench.run.system_metrics import SystemSampler


def test_sampler_records_cpu_memory_and_why_gpu_metrics_are_missing():
    with SystemSampler(interval_seconds=0.2, per_interval=2) as sampler:
        deadline = time.perf_counter() + 0.7
        while time.perf_counter() < deadline:
            sum(i * i for i in range(10_000))  # keep a core busy
    samples = sampler.samples
    assert len(samples) >= 3
    assert [s["step"] for s in samples] == list(range(len(samples)))
    assert all(b["timestamp_ms"] >= a["timestamp_ms"] for a, b in zip(samples, samples[1:]))
    for s in samples:
        assert 0 <= s["cpu_utilization_percentage"] <= 100
        assert s["system_memory_usage_megabytes"] > 0 and s["process_rss_megabytes"] > 10
    # Without an NVIDIA driver the GPU sampler is skipped with its reason; with one, GPU metrics appear.
    assert ("gpu" in sampler.missing) != any("gpu_0_utilization_percentage" in s for s in samples)


def test_sampler_stops_promptly_and_keeps_the_last_partial_interval():
    started = time.perf_counter()
    with SystemSampler(interval_seconds=30) as sampler:
        time.sleep(0.1)
    assert time.perf_counter() - started < 5
    assert len(sampler.samples) == 1 and "cpu_utilization_percentage" in sampler.samples[0]
