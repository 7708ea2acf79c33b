"""Every registered method meets the contract; the controls bracket a method that learns."""
import numpy as np
import pytest

from bench.data.patches import PatchStore
from bench.data.preprocess import parse_panel
from bench.data.splits import make_folds
from bench.evaluation.metrics import pearson_per_gene
from bench.method import InvalidPredictionError, Runtime, build_method, validate_predictions
from bench.nn.torch_utils import seed_everything
from bench.registry import get_method_class, method_classes
from bench.run.inputs import fold_panel, method_fold_inputs
from bench.testing import CHECKS, check_method

# Small settings so the contract and determinism checks run in seconds; the planted-signal tests use
# the real quick profiles.
FAST_PARAMS = {
    "linear-probe": {"patch_px": 32},
    "mclstexp": {"epochs": 1, "patch_px": 32, "top_k": 20},
    "st-net": {"epochs": 1, "patch_px": 32},
    "bleep": {"epochs": 1, "patch_px": 32, "top_k": 20},
    "histogene": {"epochs": 1, "patch_px": 16, "depth": 1, "dim": 64, "mlp_dim": 128, "heads": 2},
    "hist2st": {"epochs": 1, "patch_px": 28, "depth": 1, "heads": 2, "gnn_depth": 2, "n_copies": 1},
    "thitogene": {"epochs": 1, "patch_px": 48, "depth": 1, "vit_heads": 2, "mlp_dim": 64, "gat_hidden": 16},
    "triplex": {"epochs": 1, "patch_px": 32, "feature_px": 8, "depth2": 2, "depth3": 1, "num_heads2": 4,
                "num_heads3": 4, "mlp_ratio1": 1.0, "mlp_ratio2": 1.0},
}
# Learned methods that must beat the mean control on the planted genes.
LEARNED = [
    "mclstexp",
    "st-net",
    "bleep",
    "histogene",
    "hist2st",
    "thitogene",
    "triplex",
]
# The smallest settings that still show learning, for the methods whose quick profile takes minutes on a CPU
# (CI time: every test < 2 min on 2 idle cores). Only compute is cut: fewer epochs and 32 px patches (the
# planted signal is the patch colour; DenseNet-121 needs at least 32 px); the model, optimiser, learning rate
# and batch size stay the quick profile's. Measured on fold 0 (planted-gene r, 2 busy cores): mclSTExp 2 epochs
# 0.81 (1 epoch: 0.21), ST-Net 1 epoch 0.81, BLEEP 8 epochs 0.78 (4 epochs, 28 steps: 0.01); on 2 idle cores:
# HisToGene 10 epochs 0.81 in 11 s (8: 0.81; its quick 30: 32 s), Hist2ST 15 epochs 0.77 in 23 s (12: 0.76,
# 5: 0.17; its quick 30: 44 s), TRIPLEX 4 epochs at 32 px 0.63 in 26 s (2: 0.51).
# THItoGene learns with its quick profile as shipped.
LEARNING_PARAMS = {
    "mclstexp": {"epochs": 2, "patch_px": 32},
    "st-net": {"epochs": 1, "patch_px": 32},
    "bleep": {"patch_px": 32},
    "histogene": {"epochs": 10},
    "hist2st": {"epochs": 15},
    "triplex": {"epochs": 4, "patch_px": 32},
}


def _fold_inputs(synthetic, method, tmp_path, fold_index=0):
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[fold_index]
    genes = fold_panel(synthetic, fold, parse_panel("top-mean:40"))
    return method_fold_inputs(method, synthetic, fold, genes, PatchStore(tmp_path), pretrained="no")[0]


def _fit_predict(name, synthetic, tmp_path, seed=0, fold_index=0, profile="quick", params=None):
    params = FAST_PARAMS.get(name, {}) if params is None else params
    method = build_method(get_method_class(name), profile, params)
    method.runtime = Runtime(seed=seed, progress=False, pretrained="no")
    seed_everything(seed)  # before the inputs: a randomly initialised frozen encoder is built with them
    inputs = _fold_inputs(synthetic, method, tmp_path, fold_index)
    seed_everything(seed)
    pred = method.fit(inputs.train).predict(inputs.test)
    return method, inputs, validate_predictions(pred, len(inputs.test), len(inputs.genes), name)


# The learned methods train, and linear-probe embeds with a ResNet-50: slow. The controls stay in the fast loop.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in [*LEARNED, "linear-probe"] else n
                                  for n in sorted(method_classes())])
def test_method_contract(name, synthetic, tmp_path):
    """The checks of `python -m bench check` but learning (bench.testing), with FAST_PARAMS: listing,
    hyper-parameters, prediction, test truth withheld, determinism for a seed."""
    assert get_method_class(name).name == name
    contract = [c for c in CHECKS if c != "learning"]
    results = check_method(get_method_class(name), checks=contract, params=FAST_PARAMS.get(name, {}),
                           dataset=synthetic, cache_dir=tmp_path)
    assert [r.check for r in results] == contract
    assert not [r for r in results if r.failed], "\n".join(map(str, results))


@pytest.mark.slow
def test_controls_bracket_the_linear_probe_on_planted_genes(synthetic, tmp_path):
    planted = synthetic.attrs["planted_genes"]
    scores = {}
    for name in ("mean", "linear-probe", "spatial-oracle"):
        r_folds = []
        for fold_index in range(3):
            _, inputs, pred = _fit_predict(name, synthetic, tmp_path, fold_index=fold_index)
            r = pearson_per_gene(inputs.truth, pred)
            r_folds.append(r[np.isin(inputs.genes, planted)])
        scores[name] = np.stack(r_folds)
    assert np.isnan(scores["mean"]).all(), "constant predictions have undefined PCC, never 0"
    assert np.nanmean(scores["linear-probe"]) > 0.5
    assert np.nanmean(scores["spatial-oracle"]) > np.nanmean(scores["linear-probe"])


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED)
def test_quick_profile_learns_the_planted_signal(name, synthetic, tmp_path):
    """`bench check`'s learning check: the quick profile, with only its compute cut where it takes minutes
    (LEARNING_PARAMS), reaches a mean Pearson r of 0.3 on the planted genes."""
    params = LEARNING_PARAMS.get(name, {})
    assert set(params) <= {"epochs", "patch_px"}, "only compute may be cut, never how the method learns"
    (result,) = check_method(get_method_class(name), checks=["learning"], params=params, dataset=synthetic,
                             cache_dir=tmp_path)
    assert result.status == "pass", result


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED)
def test_training_loss_decreases(name, synthetic, tmp_path):
    losses = []
    method = build_method(get_method_class(name), "quick", {**FAST_PARAMS[name], "epochs": 4})
    method.runtime = Runtime(seed=0, progress=False, pretrained="no",
                             log_metric=lambda metric, value, step=None: losses.append((metric, step, value)))
    inputs = _fold_inputs(synthetic, method, tmp_path)
    seed_everything(0)
    method.fit(inputs.train)
    curves = {m: [(s, v) for name, s, v in losses if name == m] for m in ("train_loss", "epoch_seconds")}
    assert [s for s, _ in curves["train_loss"]] == list(range(4)) == [s for s, _ in curves["epoch_seconds"]]
    assert {m for m, _, _ in losses} == {"train_loss", "epoch_seconds"}
    values = [v for _, v in curves["train_loss"]]
    assert values[-1] < values[0] and all(v > 0 for _, v in curves["epoch_seconds"])
    wait = method.runtime.facts.get("data_wait_fraction")  # reported by methods that stream patch batches
    assert wait is None or 0 <= wait < 1


def test_profiles_resolve_by_device_and_overrides_win():
    from bench.method import resolve_profile

    assert resolve_profile("auto", "cpu") == "quick" and resolve_profile("auto", "cuda:0") == "paper"
    cls = get_method_class("mclstexp")
    paper = build_method(cls, "paper")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay, paper.top_k, paper.distance,
            paper.patch_px, paper.max_position) == (90, 128, 1e-4, 1e-3, 200, "l1", 224, 65536)
    stnet = build_method(get_method_class("st-net"), "paper")
    assert (stnet.epochs, stnet.batch_size, stnet.lr, stnet.momentum) == (50, 32, 1e-6, 0.9)
    assert build_method(cls, "quick", {"epochs": 2}).epochs == 2
    with pytest.raises(ValueError, match="no parameter"):
        build_method(cls, "quick", {"epoch": 2})
    with pytest.raises(ValueError, match="valid profiles"):
        resolve_profile("fast", "cpu")


def test_a_switch_given_on_the_command_line_is_a_bool():
    """`--set st-net.tta=false` arrives as the text 'false' (not a Python literal); it must switch the
    option off, not on (a non-empty string is truthy), and a word that is not a switch is refused."""
    from bench.cli import _param

    stnet = get_method_class("st-net")
    for text, expected in (("false", False), ("False", False), ("no", False), ("0", False), ("true", True),
                           ("yes", True), ("on", True)):
        method, param, value = _param(f"st-net.tta={text}")
        assert build_method(stnet, "quick", {param: value}).tta is expected, text
    with pytest.raises(ValueError, match="parameter tta=.maybe. is not allowed; allowed: true or false"):
        build_method(stnet, "quick", {"tta": "maybe"})
    # A number parameter that also takes a word keeps the word.
    assert build_method(get_method_class("mclstexp"), "quick", {"window_um": "encoder"}).window_um == "encoder"


def test_paper_profile_takes_each_methods_published_settings_for_the_dataset():
    from bench.method import Method, dataset_settings_note

    mcl = get_method_class("mclstexp")
    cscc = build_method(mcl, "paper", dataset="cscc")
    assert (cscc.top_k, cscc.distance, cscc.epochs) == (600, "l2", 90)
    assert build_method(mcl, "paper", {"top_k": 50}, dataset="cscc").top_k == 50, "--set wins"
    quick = build_method(mcl, "quick", dataset="cscc")
    assert (quick.top_k, quick.distance) == (200, "l1"), "quick keeps the HER2+ values"
    assert dataset_settings_note(mcl, "paper", "cscc") == "published settings for dataset cscc: top_k=600, distance=l2"
    assert dataset_settings_note(mcl, "paper", "hest") == ("no published settings for dataset hest: "
                                                           "using the HER2+ values")
    assert dataset_settings_note(mcl, "paper", "her2st") is None and dataset_settings_note(mcl, "quick", "hest") is None
    assert dataset_settings_note(get_method_class("mean"), "paper", "hest") is None  # nothing per dataset
    for cls in method_classes().values():  # every shipped setting names a real parameter
        for dataset in cls.dataset_settings:
            build_method(cls, "paper", dataset=dataset)

    class Broken(Method):
        name = "broken"
        dataset_settings = {"cscc": {"k": 1}}

        def __init__(self, top_k: int = 2):
            self.top_k = top_k

    with pytest.raises(ValueError, match=r"dataset_settings\['cscc'\] names no parameter"):
        build_method(Broken, "paper", dataset="her2st")


def test_pretrained_yes_fails_clearly_when_weights_cannot_be_had(monkeypatch):
    import torchvision

    from bench.nn.torch_utils import PretrainedUnavailableError, torchvision_backbone

    def unavailable(name):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "get_model_weights", unavailable)
    with pytest.raises(PretrainedUnavailableError, match="densenet121.*--pretrained auto/no"):
        torchvision_backbone("densenet121", "yes")
    model, used = torchvision_backbone("densenet121", "auto")
    assert used is False and model is not None


@pytest.mark.slow
def test_linear_probe_records_its_encoder_and_whether_it_was_pretrained(synthetic, tmp_path):
    method = build_method(get_method_class("linear-probe"), "quick", FAST_PARAMS["linear-probe"])
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[0]
    genes = fold_panel(synthetic, fold, parse_panel("top-mean:40"))
    _, embedder = method_fold_inputs(method, synthetic, fold, genes, PatchStore(tmp_path), pretrained="no")
    facts = embedder.facts()  # what the job writes into result.json and MLflow
    assert facts["encoder"] == "resnet50" and facts["encoder_pretrained"] is False  # pretrained="no" here
    assert len(facts["encoder_weights_sha256"]) == 64 and facts["encoder_px"] == 32


def test_validate_predictions_rejects_wrong_shape_and_non_finite():
    assert validate_predictions(np.zeros((3, 2)), 3, 2, "m").dtype == np.float32
    with pytest.raises(InvalidPredictionError, match=r"shape \(2, 2\).*\(3 spots, 2 genes\)"):
        validate_predictions(np.zeros((2, 2)), 3, 2, "m")
    bad = np.zeros((3, 2))
    bad[1, 1] = np.nan
    with pytest.raises(InvalidPredictionError, match="1 non-finite"):
        validate_predictions(bad, 3, 2, "m")
    with pytest.raises(InvalidPredictionError, match="not numeric"):
        validate_predictions([["a", "b"]] * 3, 3, 2, "m")


def test_heg_is_the_top_50_genes_by_mean_truth():
    from bench.evaluation import metric_registry
    from bench.evaluation.stats import gene_sets

    truth = np.tile(np.arange(60.0), (5, 1))  # gene j has mean j: the HEG set is genes 10..59
    r = np.zeros(60)
    r[10:] = 0.5
    r[3] = np.nan
    scores = metric_registry.aggregates(metric_registry.Block(truth, truth), metric_registry.resolve(["pearson"]),
                                        {"pearson": r}, gene_sets(truth.mean(axis=0), None))
    assert scores["heg_pearson"] == 0.5
    assert scores["n_undefined_pearson"] == 1 and np.isclose(scores["acg_pearson"], 25 / 59)
