"""Spatial-domain clustering recovers the synthetic data's planted domains from the true expression."""
import numpy as np
import pytest

from bench.data.preprocess import normalise, panel_counts
from bench.evaluation import clustering
from bench.run.inputs import section_labels


def _section(synthetic, sid):
    adata = synthetic[sid].counts
    return normalise(panel_counts(adata, list(adata.var_names))), section_labels(synthetic, (sid,))


def test_true_expression_recovers_the_planted_domains(synthetic):
    aris = []
    for sid in synthetic.sections:
        truth, labels = _section(synthetic, sid)
        rows = clustering.section_domains({"truth": truth}, labels)
        assert rows[0]["reference"] == "pathology_label" and rows[0]["n_domains"] == len(set(labels["pathology_label"]))
        aris.append(rows[0]["ari"])
    assert min(aris) >= 0.9, aris


def test_shuffled_labels_score_about_zero(synthetic):
    rng = np.random.default_rng(0)
    aris = []
    for sid in synthetic.sections:
        truth, labels = _section(synthetic, sid)
        shuffled = {"pathology_label": rng.permutation(labels["pathology_label"])}
        aris.append(clustering.section_domains({"truth": truth}, shuffled)[0]["ari"])
    assert abs(np.mean(aris)) < 0.1 and max(abs(a) for a in aris) < 0.15, aris


def test_reference_choice_and_excluded_spots():
    rng = np.random.default_rng(1)
    expr = np.vstack([rng.normal(0, 0.1, (20, 5)), rng.normal(3, 0.1, (20, 5)), rng.normal(0, 0.1, (5, 5))])
    domains = np.array(["tumour"] * 20 + ["stroma"] * 20 + ["undetermined"] * 3 + ["", "nan"])
    cluster_only = {"pathology_label": np.array([""] * 45), "cluster_label": np.array(["1"] * 20 + ["2"] * 25)}
    assert clustering.choose_reference({"pathology_label": domains, "cluster_label": domains}) == "pathology_label"
    assert clustering.choose_reference(cluster_only) == "cluster_label"
    assert clustering.choose_reference({"pathology_label": np.array(["a", "", "a"])}) is None
    row = clustering.section_domains({"prediction": expr}, {"pathology_label": domains})[0]
    assert row["n_spots"] == 40 and row["n_domains"] == 2 and row["ari"] == pytest.approx(1.0)
    assert row["nmi"] == pytest.approx(1.0)
    assert clustering.section_domains({"p": expr}, {"pathology_label": np.array([""] * 45)}) == []


def test_constant_prediction_scores_zero():
    labels = np.array(["a"] * 10 + ["b"] * 10)
    row = clustering.section_domains({"prediction": np.ones((20, 4))}, {"pathology_label": labels})[0]
    assert row["ari"] == 0.0


def test_section_labels_are_strings_with_missing_as_empty(synthetic):
    obs = synthetic["P1"].counts.obs
    saved = obs["pathology_label"].copy()
    try:
        obs.iloc[0, obs.columns.get_loc("pathology_label")] = np.nan
        labels = section_labels(synthetic, ("P1", "Q1"))
    finally:
        obs["pathology_label"] = saved
    assert len(labels["pathology_label"]) == 200 and labels["pathology_label"][0] == ""
    assert labels["pathology_label"][1] == saved.iloc[1] and labels["cluster_label"].dtype.kind == "U"


def test_domain_scores_per_section_name_the_reference():
    rng = np.random.default_rng(2)
    truth = np.vstack([rng.normal(0, 0.1, (10, 3)), rng.normal(2, 0.1, (10, 3))] * 2)
    sections = np.array(["s1"] * 20 + ["s2"] * 20)
    labels = {"pathology_label": np.array(["a"] * 10 + ["b"] * 10 + [""] * 20),
              "cluster_label": np.array(["1"] * 10 + ["2"] * 10) .tolist() * 2}
    table = clustering.domain_scores(truth + 0.01, truth, sections, labels)
    assert table[["section", "expression"]].values.tolist() == [["s1", "prediction"], ["s1", "truth"],
                                                               ["s2", "prediction"], ["s2", "truth"]]
    assert table["reference"].tolist() == ["pathology_label"] * 2 + ["cluster_label"] * 2
    assert (table["ari"] == 1.0).all()
