"""Run settings: resource requests per method and the checks on executor options."""
import pytest

from bench.run.config import BenchConfig, job_resources


def _config(**kw):
    return BenchConfig(methods=["mean", "hist2st"], dataset="synthetic", **kw)


def test_resources_layer_suite_defaults_method_metadata_and_user_overrides():
    cpu = _config(device="cpu")
    assert job_resources(cpu, "hist2st") == {"gpus": 0, "cpus": 8, "mem_gb": 48, "time_min": 720}
    assert job_resources(cpu, "mean") == {"gpus": 0, "cpus": 1, "mem_gb": 4, "time_min": 30}
    override = _config(device="cpu", resources={"all": {"cpus": 2}, "hist2st": {"time_min": 60}})
    assert job_resources(override, "hist2st") == {"gpus": 0, "cpus": 2, "mem_gb": 48, "time_min": 60}
    assert job_resources(override, "mean")["cpus"] == 2
    cuda = BenchConfig(methods=["hist2st"], device="cuda")  # not resolved: no GPU needed to plan a GPU run
    assert job_resources(cuda, "hist2st")["gpus"] == 1


def test_every_shipped_method_declares_its_cluster_request():
    """Each method's own resources name every key, so a SLURM job of any method asks for what it needs
    (the suite's generic defaults are a fallback for user plug-ins only)."""
    from bench.registry import method_classes
    from bench.run.config import RESOURCE_KEYS

    for name, cls in method_classes().items():
        assert set(cls.resources) == set(RESOURCE_KEYS), (name, cls.resources)
        learned = cls.kind == "method"
        assert cls.resources["gpus"] == (1 if learned else 0), name  # the controls need no GPU


@pytest.mark.parametrize("kw, message", [
    ({"executor": "kubernetes"}, "unknown executor"),
    ({"jobs": 0}, "--jobs must be at least 1"),
    ({"threads": 0}, "--threads must be at least 1"),
    ({"resources": {"all": {"gpu": 1}}}, r"unknown resource\(s\) \['gpu'\]"),
    ({"resources": {"st-net": {"cpus": 1}}}, "not among --methods"),
    ({"slurm": {"partiton": "gpu"}}, r"unknown SLURM option\(s\) \['partiton'\]"),
])
def test_bad_executor_settings_are_refused_before_any_work(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _config(out=str(tmp_path), device="cpu", **kw).resolved()
