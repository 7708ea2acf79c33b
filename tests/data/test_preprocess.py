"""Gene panel and targets: computed by the harness, fit on training sections only."""
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench.data.dataset import DataError
from bench.data.preprocess import TARGET_SUM, normalise, parse_panel, select_panel


def _adata(counts, genes, sid):
    a = ad.AnnData(X=sp.csr_matrix(np.asarray(counts, dtype=np.float32)),
                   var=pd.DataFrame(index=genes))
    a.uns["section_id"] = sid
    return a


def test_normalise_scales_each_spot_to_target_sum_then_natural_log():
    counts = np.array([[1, 3, 0], [10, 10, 20], [0, 0, 0]], dtype=float)
    out = normalise(counts)
    assert np.allclose(np.expm1(out[:2]).sum(axis=1), TARGET_SUM, rtol=1e-5)
    assert np.allclose(out[0], np.log1p([2500, 7500, 0]), rtol=1e-6)
    assert np.all(out[2] == 0)  # an empty spot stays zero instead of dividing by zero


def test_parse_panel_forms_and_errors(tmp_path):
    assert str(parse_panel("hvg:50")) == "hvg:50"
    assert parse_panel("top-mean:7").n == 7
    f = tmp_path / "genes.txt"
    f.write_text("A\nB\n")
    assert parse_panel(f"file:{f}").path == f.resolve()
    for bad in ("hvg", "hvg:x", "hvg:0", "pca:5"):
        with pytest.raises(ValueError):
            parse_panel(bad)
    with pytest.raises(DataError, match="missing.txt"):
        parse_panel(f"file:{tmp_path / 'missing.txt'}")


def test_panels_are_chosen_from_training_sections_only():
    rng = np.random.default_rng(0)
    n_genes = 400
    genes = [f"G{i}" for i in range(n_genes)]
    level = np.exp(rng.uniform(np.log(2), np.log(200), n_genes))  # a realistic spread of mean levels
    # Overdispersed swings (0 or 2x the mean) make a gene highly variable for its mean level:
    # G0..G4 swing in the training section only, G399 in the test section only.
    train_counts = rng.poisson(level, (300, n_genes)).astype(float)
    train_counts[:, :5] = rng.choice([0, 2], (300, 5)) * level[:5]
    test_counts = rng.poisson(level, (300, n_genes)).astype(float)
    test_counts[:, 399] = rng.choice([0, 2], 300) * level[399]
    train, test = _adata(train_counts, genes, "T1"), _adata(test_counts, genes, "T2")
    assert set(select_panel(parse_panel("hvg:5"), [train], [train, test])) == {f"G{i}" for i in range(5)}
    # Swapping the roles flips the choice: the panel follows whatever is training.
    assert "G399" in select_panel(parse_panel("hvg:5"), [test], [train, test])


def test_top_mean_panel_ranks_training_means():
    genes = ["A", "B", "C", "D"]
    train = _adata(np.tile([1, 30, 5, 30], (4, 1)), genes, "T1")
    test = _adata(np.tile([90, 1, 1, 1], (4, 1)), genes, "T2")
    # B and D tie on the training mean: the tie is broken by name, never by file order.
    assert select_panel(parse_panel("top-mean:3"), [train], [train, test]) == ["B", "D", "C"]


def test_panel_only_uses_genes_present_in_every_section():
    a = _adata(np.ones((5, 3)) * [1, 50, 2], ["A", "B", "C"], "S1")
    b = _adata(np.ones((5, 2)), ["A", "C"], "S2")
    assert select_panel(parse_panel("top-mean:2"), [a], [a, b]) == ["C", "A"]


def test_a_panel_larger_than_the_shared_genes_is_all_of_them_and_says_so(caplog):
    """The default hvg:250 on a 40-gene dataset runs on its 40 genes (ranked as ever), warned once."""
    a = _adata(np.ones((5, 3)) * [1, 50, 2], ["A", "B", "C"], "S1")
    b = _adata(np.ones((5, 2)), ["A", "C"], "S2")
    with caplog.at_level(logging.WARNING):
        assert select_panel(parse_panel("top-mean:3"), [a], [a, b]) == ["C", "A"]
        assert select_panel(parse_panel("top-mean:3"), [b], [a, b]) == ["A", "C"]  # another fold: not again
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["panel top-mean:3 asks for 3 genes but the sections share only 2: the panel is all 2 of them"]


def test_file_panel_unknown_gene_names_file_gene_and_section(tmp_path):
    f = tmp_path / "panel.txt"
    f.write_text("A\nNOT_A_GENE\n")
    a = _adata(np.ones((3, 2)), ["A", "B"], "S1")
    with pytest.raises(DataError, match=r"panel\.txt.*NOT_A_GENE.*S1"):
        select_panel(parse_panel(f"file:{f}"), [a], [a])
    f.write_text("B\nA\n")
    assert select_panel(parse_panel(f"file:{f}"), [a], [a]) == ["B", "A"]


def _dense_panel(kind, n, train_adatas, genes):
    """The panel as it was computed before it went sparse: all shared genes stacked dense."""
    import scanpy as sc

    logged = normalise(np.vstack([a[:, genes].X.toarray() for a in train_adatas]))
    if kind == "top-mean":
        score = logged.mean(axis=0)
    else:
        table = sc.pp.highly_variable_genes(ad.AnnData(X=logged, var=pd.DataFrame(index=genes)),
                                            flavor="seurat", inplace=False)
        score = np.nan_to_num(table["dispersions_norm"].to_numpy(dtype=float), nan=-np.inf)
    order = sorted(range(len(genes)), key=lambda i: (-score[i], genes[i]))
    return [genes[i] for i in order[:n]]


@pytest.mark.parametrize("kind, n", [("hvg", 50), ("hvg", 200), ("top-mean", 50), ("top-mean", 200)])
def test_sparse_panel_equals_the_dense_computation(kind, n):
    """Sparse counts (many zeros, an empty spot, a never-seen gene) give exactly the dense panel."""
    rng = np.random.default_rng(5)
    genes = [f"G{i:03d}" for i in range(300)]
    adatas = []
    for s in range(3):
        level = rng.gamma(0.5, 3.0, len(genes))
        counts = rng.poisson(level * rng.uniform(0.2, 3.0, (150, 1)))
        counts[0] = 0  # an empty spot stays zero
        counts[:, 7] = 0  # a gene no spot expresses
        adatas.append(_adata(counts, genes, f"S{s}"))
    assert min(np.mean(a.X.toarray() == 0) for a in adatas) > 0.3, "the data should be sparse"
    train = adatas[:2]
    got = select_panel(parse_panel(f"{kind}:{n}"), train, adatas)
    assert got == _dense_panel(kind, n, train, genes)
