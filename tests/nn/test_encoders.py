"""The encoder registry, the embedding cache, and the linear probe on any encoder.

A small randomly initialised timm ViT stands in for a pathology foundation model: same code path (timm
model, its own mean/std and input size, a cached embedding per section), a thousandth of the compute."""
import json

import numpy as np
import pytest
import torch

from bench.data.embeddings import EmbeddingCache
from bench.data.patches import PatchStore
from bench.data.preprocess import parse_panel
from bench.data.splits import make_folds
from bench.evaluation.metrics import pearson_per_gene
from bench.method import EmbeddingSpec, Runtime, build_method
from bench.nn import encoders
from bench.nn.encoders import Encoder, EncoderSpec, EncoderUnavailableError, load_encoder, register_encoder
from bench.registry import get_method_class
from bench.run.embedding import SectionEmbedder
from bench.run.inputs import fold_panel, method_fold_inputs

TINY_MEAN, TINY_STD = (0.6, 0.5, 0.4), (0.2, 0.25, 0.3)


def tiny_vit(pretrained: str = "no") -> Encoder:
    """A 2-block ViT on 32 px inputs (8 px patches), random weights seeded for the test."""
    import timm

    torch.manual_seed(7)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              depth=2)
    spec = EncoderSpec("tiny-vit", 32, TINY_MEAN, TINY_STD, 2.0, model.num_features, "custom", "test stand-in")
    return Encoder(spec, model.eval(), pretrained=False)


@pytest.fixture(autouse=True)
def _tiny_vit_registered():
    register_encoder("tiny-vit", tiny_vit)
    yield
    encoders._CUSTOM.pop("tiny-vit", None)


def _patches(n=6, px=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


@pytest.mark.slow
def test_names_resolve_to_models_with_their_preprocessing():
    resnet = load_encoder("resnet50", pretrained="no")
    assert (resnet.spec.px, resnet.spec.dim, resnet.spec.source) == (224, 2048, "torchvision")
    assert resnet.spec.mean == (0.485, 0.456, 0.406) and not resnet.pretrained
    vit = load_encoder("timm:vit_tiny_patch16_224", pretrained="no")
    # timm's own pretrained config decides the input size and normalisation.
    assert (vit.spec.px, vit.spec.dim, vit.spec.mean, vit.spec.std) == (224, 192, (0.5,) * 3, (0.5,) * 3)
    assert vit.spec.um_per_px is None and vit.spec.window_um is None
    tiny = load_encoder("tiny-vit")
    assert tiny.spec.window_um == 64.0  # 32 px x 2 µm/px: what window_um="encoder" cuts
    uni = encoders.HUB_MODELS["MahmoodLab/UNI"]
    assert (uni.dim, uni.px, uni.um_per_px, uni.px * uni.um_per_px) == (1024, 224, 0.5, 112.0)
    with pytest.raises(ValueError, match="unknown encoder 'resnet5000'"):
        load_encoder("resnet5000")
    with pytest.raises(ValueError, match="reserved"):
        register_encoder("timm:mine", tiny_vit)


def test_embed_resizes_normalises_and_counts_its_batches():
    encoder = load_encoder("tiny-vit")
    patches = _patches(n=5, px=48)
    got = encoder.embed(patches, batch_size=2)
    assert got.shape == (5, encoder.spec.dim) and got.dtype == np.float32 and encoder.forward_batches == 3
    # The same computation written out: [0, 1], bilinear antialiased resize to 32 px, the encoder's mean/std.
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(TINY_MEAN).view(1, 3, 1, 1)) / torch.tensor(TINY_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = encoder.model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_local_checkpoint_gives_the_in_memory_models_embeddings(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = load_encoder(f"timm:vit_tiny_patch16_224@{path}")
    assert loaded.pretrained and loaded.checkpoint == str(path)
    reference = Encoder(loaded.spec, encoders._TokensOrPooled(model, "pooled"), pretrained=True)
    patches = _patches(n=3, px=224, seed=1)
    np.testing.assert_array_equal(loaded.embed(patches), reference.embed(patches))
    assert loaded.weights_sha256 == reference.weights_sha256
    assert loaded.weights_sha256 != load_encoder("timm:vit_tiny_patch16_224", pretrained="no").weights_sha256


def test_a_bad_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(EncoderUnavailableError, match="no such checkpoint file"):
        load_encoder(f"resnet50@{tmp_path / 'missing.safetensors'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderUnavailableError, match="not a readable checkpoint"):
        load_encoder(f"resnet50@{junk}")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(EncoderUnavailableError, match="does not fit|lacks"):
        load_encoder(f"resnet18@{tmp_path / 'other.pt'}")


def test_an_unreachable_hub_gives_one_line_naming_model_reason_and_fix(monkeypatch):
    # This machine has no route to the hub: the real network path is exercised, not a mock.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if encoders.hub_offline_reason(timeout=2) is None:
        pytest.skip("the Hugging Face hub is reachable from here; the offline path cannot be tested for real")
    with pytest.raises(EncoderUnavailableError) as err:
        load_encoder("hf-hub:MahmoodLab/UNI")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("encoder hf-hub:MahmoodLab/UNI: the Hugging Face hub cannot be reached")
    assert "HF_TOKEN" in message and "hf-hub:MahmoodLab/UNI@/path/to/weights.safetensors" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailableError, match="HF_HUB_OFFLINE is set"):
        load_encoder("hf-hub:bioptimus/H-optimus-0")
    with pytest.raises(EncoderUnavailableError, match="without its weights"):
        load_encoder("hf-hub:MahmoodLab/UNI", pretrained="no")


def test_hub_errors_say_gated_or_not_found():
    gated = encoders._hub_failure("hf-hub:MahmoodLab/UNI", OSError("401 Client Error: access to model is restricted"))
    assert "gated" in gated and "accept its licence" in gated and "HF_TOKEN" in gated
    missing = encoders._hub_failure("hf-hub:nobody/nothing", OSError("404 Client Error: Repository Not Found"))
    assert "no such model on the hub" in missing


@pytest.mark.slow
def test_embeddings_are_computed_once_and_a_damaged_entry_is_rebuilt(synthetic, tmp_path):
    store, cache = PatchStore(tmp_path), EmbeddingCache(tmp_path)
    sections = synthetic.imaged_sections()[:2]
    first = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um="encoder"), store, cache)
    assert first.patch_spec.window_um == 64.0 and first.patch_spec.px == 32
    embedded = {sid: np.array(first.section(synthetic.name, synthetic[sid])) for sid in sections}
    assert first.encoder.forward_batches > 0 and cache.computed == 2

    again = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um="encoder"), PatchStore(tmp_path),
                            EmbeddingCache(tmp_path))
    for sid in sections:  # a new job (new encoder object, new cache object) reads what the first one wrote
        np.testing.assert_array_equal(again.section(synthetic.name, synthetic[sid]), embedded[sid])
    assert again.encoder.forward_batches == 0 and again.cache.computed == 0

    # Another window is another entry; a damaged file is rebuilt, not trusted.
    other = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um=100.0), store, EmbeddingCache(tmp_path))
    other.section(synthetic.name, synthetic[sections[0]])
    assert other.cache.computed == 1
    entry = again.cache.path(synthetic.name, store.key(synthetic.name, synthetic[sections[0]], again.patch_spec),
                             again.encoder.identity(again.px))
    data = bytearray(entry.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # a NaN where a number was
    entry.write_bytes(bytes(data))
    third = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um="encoder"), store, EmbeddingCache(tmp_path))
    np.testing.assert_array_equal(third.section(synthetic.name, synthetic[sections[0]]), embedded[sections[0]])
    assert third.cache.computed == 1 and json.loads(entry.with_suffix(".json").read_text())["encoder"] == "tiny-vit"
    entry.with_suffix(".json").unlink()  # a record lost (a writer killed between the two moves): rebuilt
    fourth = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um="encoder"), store, EmbeddingCache(tmp_path))
    fourth.section(synthetic.name, synthetic[sections[0]])
    assert fourth.cache.computed == 1


def test_the_next_sections_patches_are_cut_in_a_thread_while_one_is_embedded(synthetic, tmp_path, monkeypatch):
    import threading

    sections = [synthetic[sid] for sid in synthetic.imaged_sections()[:3]]
    plain = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um="encoder"), PatchStore(tmp_path / "a"),
                            EmbeddingCache(tmp_path / "a"))
    expected = [np.array(plain.section(synthetic.name, s)) for s in sections]

    store = PatchStore(tmp_path / "b")
    cut_by, real = [], store.patches

    def patches(*args):
        cut_by.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(store, "patches", patches)
    ahead = SectionEmbedder(EmbeddingSpec("tiny-vit", window_um="encoder"), store, EmbeddingCache(tmp_path / "b"))
    ahead.prefetch(synthetic.name, sections)
    for section, want in zip(sections, expected):
        np.testing.assert_array_equal(ahead.section(synthetic.name, section), want)
    assert len(cut_by) == 3 and all(name.startswith("cut-patches") for name in cut_by)


def test_window_encoder_needs_a_known_magnification(tmp_path):
    with pytest.raises(ValueError, match="declares no native magnification"):
        SectionEmbedder(EmbeddingSpec("timm:vit_tiny_patch16_224", window_um="encoder"), PatchStore(tmp_path),
                        EmbeddingCache(tmp_path), pretrained="no")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["suite", "hest"])
def test_linear_probe_on_a_timm_encoder_learns_the_planted_signal(synthetic, tmp_path, protocol):
    method = build_method(get_method_class("linear-probe"), "quick",
                          {"encoder": "tiny-vit", "window_um": "encoder", "protocol": protocol})
    method.runtime = Runtime(seed=0, progress=False, pretrained="no")
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[0]
    genes = fold_panel(synthetic, fold, parse_panel("top-mean:40"))
    inputs, embedder = method_fold_inputs(method, synthetic, fold, genes, PatchStore(tmp_path), pretrained="no")
    assert inputs.train.embeddings.shape == (len(inputs.train), embedder.encoder.spec.dim)
    pred = method.fit(inputs.train).predict(inputs.test)
    planted = [genes.index(g) for g in synthetic.attrs["planted_genes"] if g in genes]
    r = pearson_per_gene(inputs.truth, pred)
    assert np.nanmean(r[planted]) > 0.3, f"{protocol}: planted genes r = {np.nanmean(r[planted]):.3f}"
    if protocol == "hest":  # no intercept, as HEST: predictions centred on zero, the scores unaffected
        assert abs(float(pred.mean())) < 0.5 * abs(float(inputs.truth.mean()))


PLUGIN = '''
import timm
import torch

from bench.nn.encoders import Encoder, EncoderSpec, register_encoder
from bench.registry import get_method_class


def tiny(pretrained):
    torch.manual_seed(7)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              depth=2)
    return Encoder(EncoderSpec("tiny-vit", 32, (0.5,) * 3, (0.5,) * 3, 2.0, 192, "custom"), model.eval(), False)


register_encoder("tiny-vit", tiny)


class SecondProbe(get_method_class("linear-probe")):
    name = "second-probe"
'''


@pytest.mark.slow
def test_a_run_with_two_encoders_records_them_and_reuses_embeddings(tmp_path):
    import pandas as pd
    from conftest import run_synthetic_with_plugins

    from bench.pipeline import encoder_params

    assert encoder_params(["linear-probe", "mean"], "tiny-vit") == {"linear-probe": {"encoder": "tiny-vit"}}
    out = run_synthetic_with_plugins(tmp_path, {"second_probe.py": PLUGIN}, ["linear-probe", "second-probe"],
                                     params={"linear-probe": {"patch_px": 32},
                                             "second-probe": {"encoder": "tiny-vit", "window_um": "encoder"}})
    per_job = pd.read_parquet(out / "results" / "per_job.parquet")
    encoders_used = per_job.groupby("method")["encoder"].agg(set).to_dict()
    assert encoders_used == {"linear-probe": {"resnet50"}, "second-probe": {"tiny-vit"}}
    assert per_job["encoder_weights_sha256"].str.len().eq(64).all()
    html = (out / "report.html").read_text()
    assert "Method x image encoder" in html and "tiny-vit (weights " in html
    # Every fold embedded each section once per encoder: the cache holds one entry per (section, encoder).
    entries = list((tmp_path / "cache" / "embeddings").rglob("*.npy"))
    assert len(entries) == 2 * 6


@pytest.mark.parametrize("name, params", [
    ("mclstexp", {"epochs": 6, "top_k": 20, "max_position": 256}),
    ("bleep", {"epochs": 6, "top_k": 20, "batch_size": 32, "devices": 1, "reshuffle": True}),
    ("st-net", {"epochs": 6, "lr": 1e-3}),
])
@pytest.mark.slow
def test_learned_methods_train_their_heads_on_a_frozen_encoder(synthetic, tmp_path, name, params):
    """``image_encoder=NAME``: no patches, the encoder's cached embeddings instead, and the method still learns."""
    method = build_method(get_method_class(name), "quick", {**params, "image_encoder": "tiny-vit",
                                                              "window_um": "encoder"})
    assert method.patch_spec() is None and method.embedding_spec().encoder == "tiny-vit"
    method.runtime = Runtime(seed=0, progress=False, pretrained="no")
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[0]
    genes = fold_panel(synthetic, fold, parse_panel("top-mean:40"))
    torch.manual_seed(0)
    inputs, embedder = method_fold_inputs(method, synthetic, fold, genes, PatchStore(tmp_path), pretrained="no")
    assert inputs.train.patches is None and inputs.train.embeddings is not None
    pred = method.fit(inputs.train).predict(inputs.test)
    assert "pretrained" not in method.runtime.facts  # the harness records the frozen encoder's instead
    planted = [genes.index(g) for g in synthetic.attrs["planted_genes"] if g in genes]
    r = pearson_per_gene(inputs.truth, pred)
    assert np.nanmean(r[planted]) > 0.2, f"{name} on a frozen encoder: planted genes r = {np.nanmean(r[planted]):.3f}"


class _FakeTimm:
    """timm as far as the weight download goes: ``create_model`` raises what the test plants."""

    def __init__(self, error: Exception, published=("vit_x.tag",)):
        self.error, self.published = error, list(published)

    def list_models(self, pretrained=False):
        return self.published if pretrained else ["vit_x"]

    def create_model(self, name, pretrained=False, **kwargs):
        raise self.error


@pytest.mark.parametrize("error, code", [
    (OSError("404 Client Error: Repository Not Found"), 2),  # huggingface_hub's HTTP errors are OSErrors
    (ConnectionError("Network is unreachable"), 2),
    (TypeError("create_model() got an unexpected keyword argument 'init_values'"), 1),
    (RuntimeError("size mismatch for head.weight"), 1),
])
def test_only_a_failed_download_reads_as_an_unavailable_encoder(error, code, monkeypatch):
    """A bug inside model construction must not be reported as the user's network (exit 2)."""
    from bench.cli import describe_error

    monkeypatch.setattr(encoders, "hub_offline_reason", lambda: None)
    monkeypatch.setattr(encoders, "_timm", lambda: _FakeTimm(error))
    for build in (lambda: encoders._hub_encoder("MahmoodLab/UNI", "auto"),
                  lambda: encoders._timm_encoder("vit_x", "yes")):
        with pytest.raises(Exception) as raised:
            build()
        message, exit_code = describe_error(raised.value)
        assert exit_code == code, message
        if code == 2:
            assert isinstance(raised.value, EncoderUnavailableError) and raised.value.__cause__ is error
        else:
            assert raised.value is error and "a bug" in message


def test_a_timm_model_without_published_weights_is_unavailable_not_a_bug(monkeypatch):
    monkeypatch.setattr(encoders, "_timm", lambda: _FakeTimm(AssertionError("must not be called"), published=()))
    with pytest.raises(EncoderUnavailableError, match="timm publishes no pretrained weights for it"):
        encoders._timm_encoder("vit_x", "yes")
