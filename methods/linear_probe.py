"""Linear probe (HEST-Benchmark style): frozen image encoder -> StandardScaler + PCA(256) -> Ridge.

A strong, cheap reference point: the encoder is never trained, so what it scores measures how much
expression is linearly readable from its features. Scaler, PCA and Ridge are fit on the training spots only.

``encoder``: any name of the encoder registry (``bench.nn.encoders``: ``resnet50``, ``timm:<model>``,
``hf-hub:MahmoodLab/UNI``, a local checkpoint ...). The harness embeds each section once per encoder and
caches the embeddings (``SpotData.embeddings``), so every fold, seed and run reuses them. ``window_um``: the
tissue window in µm (165: the published methods' 224 px crop on her2st at its first-estimated 0.73 µm/px;
~154 µm at the fitted 0.687), or ``"encoder"`` for the encoder's
own field of view (224 px x 0.5 µm/px = 112 µm for most pathology models).

Defaults: torchvision ResNet-50 (ImageNet weights when they can be had; see ``Runtime.pretrained``),
224 px patches of the common 165 µm window, ImageNet mean/std input normalisation, 2048-d pooled
features, Ridge alpha = 100 / (n_components * n_genes) as in HEST.

Two protocols:
- ``suite`` (default): the Ridge fits an intercept. HEST fits none on PCA-centred features, which leaves
  predictions centred at zero; PCC is the same either way, but MSE/MAE are only meaningful with it.
- ``hest``: HEST-Benchmark's probe as its code runs it (``bench/benchmark.py`` and ``bench/trainer.py``):
  scikit-learn ``StandardScaler`` + ``PCA(256, random_state=seed)`` (randomized solver at this size), then
  ``Ridge(solver="lsqr", alpha=100 / (d x G), fit_intercept=False, max_iter=1000)`` with d = 256 components and
  G genes. It holds the training embeddings in memory (n_spots x dim floats).

Fitting ``suite`` is one streaming pass (memory does not grow with the number of spots): per batch of features the
sums, the feature x feature and feature x target cross-products are accumulated in float64, and the
same model as scikit-learn's ``make_pipeline(StandardScaler(), PCA(k, svd_solver="full"), Ridge(alpha))``
is then solved in closed form (``StreamingProbe``). HEST's scikit-learn PCA picks a randomized solver at
this size, an approximation of this exact one.
"""
import numpy as np

from bench.method import COUNT, POSITIVE, EmbeddingSpec, Method, Options, SpotData


class StreamingProbe:
    """StandardScaler -> PCA(k) -> Ridge(alpha, with intercept), fit from accumulated moments.

    Why this is the same model: with Z the standardised features, PCA's components are the top-k
    eigenvectors V of ZᵀZ (Z is centred) and its scores T = ZV have TᵀT = diag(eigenvalues) and zero
    mean, so Ridge's intercept is the target mean and its coefficients are VᵀZᵀ(Y - Ȳ) / (eigenvalue +
    alpha). Every term comes from n, Σx, Σxxᵀ, Σxyᵀ and Σy; a component's sign cancels in the prediction.
    """

    def __init__(self):
        self.n = 0
        self.shift = None  # the first batch's feature mean: moments about it lose less to cancellation

    def update(self, features: np.ndarray, targets: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.sx = np.zeros(x.shape[1])
            self.sxx = np.zeros((x.shape[1], x.shape[1]))
            self.sxy = np.zeros((x.shape[1], y.shape[1]))
            self.sy = np.zeros(y.shape[1])
        x = x - self.shift
        self.n += len(x)
        self.sx += x.sum(axis=0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.sy += y.sum(axis=0)

    def solve(self, n_components: int, alpha: float) -> "StreamingProbe":
        n = self.n
        mean = self.sx / n  # of the shifted features
        y_mean = self.sy / n
        scatter = self.sxx - n * np.outer(mean, mean)  # Σ (x - x̄)(x - x̄)ᵀ
        cross = self.sxy - n * np.outer(mean, y_mean)  # Σ (x - x̄)(y - ȳ)ᵀ
        var = np.clip(np.diag(scatter) / n, 0, None)
        # StandardScaler leaves constant features unscaled (its own test for "constant", in float64).
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * (mean + self.shift) * eps) ** 2
        scale = np.where(constant, 1.0, np.sqrt(var))
        gram = scatter / np.outer(scale, scale)  # ZᵀZ
        eigenvalues, vectors = np.linalg.eigh(gram)
        top = np.argsort(eigenvalues)[::-1][:n_components]
        eigenvalues, vectors = np.clip(eigenvalues[top], 0, None), vectors[:, top]
        coef = (vectors.T @ (cross / scale[:, None])) / (eigenvalues + alpha)[:, None]  # (k, genes)
        # Folded into one linear map of the raw features: ŷ = x @ weights + intercept.
        self.weights_ = (vectors @ coef) / scale[:, None]
        self.intercept_ = y_mean - (mean + self.shift) @ self.weights_
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weights_ + self.intercept_


class LinearProbe(Method):
    name = "linear-probe"
    description = "frozen image encoder (any: resnet50, timm:, hf-hub:, checkpoint) -> PCA(256) -> Ridge (HEST)"
    # One forward pass of a frozen encoder over every spot (cached), then a closed-form fit: one GPU, under an hour.
    resources = {"gpus": 1, "cpus": 8, "mem_gb": 16, "time_min": 60}
    PROTOCOLS = ("suite", "hest")

    parameter_constraints = {
        "encoder": [str], "window_um": [*POSITIVE, Options("encoder")], "patch_px": [*COUNT, None],
        "n_components": COUNT, "protocol": [Options(*PROTOCOLS)]}

    def __init__(self, encoder: str = "resnet50", window_um: float | str = 165.0, patch_px: int | None = None,
                 n_components: int = 256, protocol: str = "suite"):
        self.encoder = encoder
        self.window_um = window_um
        self.patch_px = patch_px  # None: the encoder's input size (224 for ResNet-50); smaller is cheaper
        self.n_components = n_components
        self.protocol = protocol

    def embedding_spec(self) -> EmbeddingSpec:
        if self.protocol not in self.PROTOCOLS:
            raise ValueError(f"linear-probe protocol must be one of {self.PROTOCOLS}, got {self.protocol!r}")
        return EmbeddingSpec(encoder=self.encoder, window_um=self.window_um, px=self.patch_px)

    def fit(self, train: SpotData) -> "LinearProbe":
        features = train.embeddings
        n_components = min(self.n_components, len(train), features.shape[1])
        if self.protocol == "hest":
            from sklearn.decomposition import PCA
            from sklearn.linear_model import Ridge
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            seed = self.runtime.seed
            self.reduce_ = make_pipeline(StandardScaler(), PCA(n_components=n_components, random_state=seed))
            reduced = self.reduce_.fit_transform(np.asarray(features, dtype=np.float64))
            alpha = 100.0 / (reduced.shape[1] * train.n_genes)
            self.regressor_ = Ridge(solver="lsqr", alpha=alpha, fit_intercept=False, max_iter=1000,
                                    random_state=seed).fit(reduced, train.expression)
            return self
        probe = StreamingProbe()
        for start in range(0, len(train), self.ROWS_PER_BLOCK):
            rows = slice(start, start + self.ROWS_PER_BLOCK)
            probe.update(features[rows], train.expression[rows])
        self.regressor_ = probe.solve(n_components, 100.0 / (n_components * train.n_genes))
        return self

    ROWS_PER_BLOCK = 4096  # embeddings are read from the memory-mapped cache a block at a time

    def predict(self, test: SpotData) -> np.ndarray:
        if self.protocol == "hest":
            return self.regressor_.predict(self.reduce_.transform(np.asarray(test.embeddings, dtype=np.float64)))
        out = np.empty((len(test), len(self.regressor_.intercept_)))
        for start in range(0, len(test), self.ROWS_PER_BLOCK):
            rows = slice(start, start + self.ROWS_PER_BLOCK)
            out[rows] = self.regressor_.predict(test.embeddings[rows])
        return out
