"""The synthetic data must carry the planted image -> expression signal the method tests rely on."""
import numpy as np

from bench.data.patches import PatchSpec, PatchStore
from bench.data.preprocess import normalise, panel_counts


def test_synthetic_has_patients_sections_coordinates_and_domains(synthetic):
    assert len(synthetic.sections) == 6
    assert set(synthetic.patients()) == {"P", "Q", "R"}
    assert synthetic.imaged_sections() == list(synthetic.sections)
    adata = synthetic["P1"].counts
    assert adata.n_obs == 100 and adata.n_vars == 40
    assert set(adata.obs["pathology_label"]) <= {"domain0", "domain1", "domain2"}
    assert adata.obs["pathology_label"].nunique() >= 2
    assert np.allclose(synthetic["P1"].um_per_px, 200 / 24)


def test_synthetic_is_deterministic_for_a_seed():
    from bench.registry import get_dataset_module

    module = get_dataset_module("synthetic")
    a, b, c = module.load(None, seed=3), module.load(None, seed=3), module.load(None, seed=4)
    assert np.array_equal(a["Q2"].counts.X.toarray(), b["Q2"].counts.X.toarray())
    assert np.array_equal(a["Q2"].image.read(), b["Q2"].image.read())
    assert not np.array_equal(a["Q2"].counts.X.toarray(), c["Q2"].counts.X.toarray())


def test_planted_genes_follow_patch_colour_and_others_do_not(synthetic, tmp_path):
    store = PatchStore(tmp_path)
    planted = synthetic.attrs["planted_genes"]
    darkness, expression, genes = [], [], None
    for sid in synthetic.sections:
        section = synthetic[sid]
        patches = store.patches("synthetic", section, PatchSpec(px=16))
        darkness.append(255 - np.asarray(patches, dtype=float).mean(axis=(1, 2, 3)))
        genes = list(section.counts.var_names)
        expression.append(normalise(panel_counts(section.counts, genes)))
    darkness, expression = np.concatenate(darkness), np.vstack(expression)
    r = np.array([abs(np.corrcoef(darkness, expression[:, j])[0, 1]) for j in range(len(genes))])
    is_planted = np.isin(genes, planted)
    assert r[is_planted].mean() > 0.6
    assert r[~is_planted].mean() < 0.3
