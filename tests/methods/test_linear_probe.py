"""The linear probe's streaming closed form is the scikit-learn pipeline it replaces."""
import importlib

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.registry import get_method_class


def _streaming_probe():
    return importlib.import_module(get_method_class("linear-probe").__module__).StreamingProbe


@pytest.mark.parametrize("n_train, n_features, n_components", [
    (600, 80, 40),    # more spots than features
    (120, 300, 120),  # fewer spots than features (k = n_spots, as the method caps it)
    (90, 50, 50),     # every component kept
])
def test_closed_form_matches_the_sklearn_pipeline(n_train, n_features, n_components):
    rng = np.random.default_rng(n_train)
    # Correlated, offset, unequally scaled features (like pooled CNN activations), one constant feature.
    mixing = rng.normal(size=(n_features, n_features)) * rng.gamma(1.0, 1.0, n_features)
    x = np.abs(rng.normal(size=(n_train + 50, n_features)) @ mixing) + 5.0
    x[:, 3] = 2.0
    y = x[:, :6] @ rng.normal(size=(6, 7)) + rng.normal(0, 2.0, (len(x), 7))
    x_train, y_train, x_test = x[:n_train], y[:n_train], x[n_train:]
    alpha = 100.0 / (n_components * y.shape[1])

    reference = make_pipeline(StandardScaler(), PCA(n_components, svd_solver="full"), Ridge(alpha=alpha))
    expected = reference.fit(x_train, y_train).predict(x_test)
    probe = _streaming_probe()()
    for start in range(0, n_train, 64):  # in batches, as the method feeds it
        probe.update(x_train[start:start + 64], y_train[start:start + 64])
    got = probe.solve(n_components, alpha).predict(x_test)

    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    # It is a fitted model, not a constant: predictions follow the targets.
    assert np.corrcoef(got[:, 0], y[n_train:, 0])[0, 1] > 0.5
