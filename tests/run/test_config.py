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


def test_the_plan_holds_every_parameter_checked_and_builds_no_method(tmp_path, monkeypatch):
    """resolved() is the run's plan: each method's full parameters (profile, published dataset settings, --set),
    checked without building the method; a job then builds it once from the plan alone."""
    import functools
    from dataclasses import replace

    from bench.registry import get_method_class
    from bench.run.config import make_method

    cls = get_method_class("mclstexp")
    built = []
    original = cls.__init__

    @functools.wraps(original)
    def counting(self, *args, **kw):
        built.append(kw)
        original(self, *args, **kw)

    monkeypatch.setattr(cls, "__init__", counting)
    plan = BenchConfig(methods=["mclstexp"], dataset="cscc", profile="paper", device="cpu", out=str(tmp_path),
                       params={"mclstexp": {"top_k": 7, "augment": "false"}}).resolved()
    assert built == [], "planning builds no method"
    params = plan.method_params["mclstexp"]
    assert set(params) == set(cls.param_names())
    assert (params["top_k"], params["augment"], params["distance"], params["window_px"]) == (7, False, "l2", 224)
    assert make_method(plan, "mclstexp").get_params() == params and len(built) == 1
    with pytest.raises(ValueError, match="not in the run's plan"):
        make_method(BenchConfig(methods=["mclstexp"]), "mclstexp")
    edited = replace(plan, method_params={"mclstexp": {**params, "distance": "cosine"}})  # e.g. a job file edited
    with pytest.raises(ValueError, match="parameter distance='cosine' is not allowed"):
        make_method(edited, "mclstexp")


@pytest.mark.parametrize("encoder, pretrained, message", [
    ("hf-hub:MahmoodLab/UNI", "auto", "encoder hf-hub:MahmoodLab/UNI: the Hugging Face hub cannot be reached "
                                      "(HF_HUB_OFFLINE is set) and the model is not in the local cache"),
    ("hf-hub:MahmoodLab/UNI", "no", "a foundation model without its weights is only its architecture"),
    ("resnet50@/no/such/weights.pt", "auto", "encoder resnet50@/no/such/weights.pt: no such checkpoint file"),
    ("cigar", "yes", "encoder cigar: no checkpoint at"),
    ("resnet5O", "auto", "unknown encoder 'resnet5O'"),
])
def test_an_encoder_that_cannot_be_had_is_refused_by_the_plan(encoder, pretrained, message, tmp_path, monkeypatch):
    """Found once, before any job (it was found once per job, as FAILED ... EncoderUnavailableError)."""
    from huggingface_hub import constants

    from bench.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setenv("STBENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    for method, param in (("linear-probe", "encoder"), ("st-net", "image_encoder")):
        config = BenchConfig(methods=[method], dataset="synthetic", device="cpu", out=str(tmp_path / "out"),
                             pretrained=pretrained, params={method: {param: encoder}})
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config.resolved()
    assert not (tmp_path / "out").exists()
