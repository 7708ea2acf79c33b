"""Linear probe (HEST-Benchmark style): frozen image encoder -> StandardScaler + PCA(256) -> Ridge.

A strong, cheap reference point: the encoder is never trained, so what it scores measures how much
expression is linearly readable from generic image features. Scaler, PCA and Ridge are fit on the
training spots only.

Defaults: torchvision ResNet-50 (ImageNet weights when they can be had; see ``Runtime.pretrained``),
224 px patches of the common 165 µm window, ImageNet mean/std input normalisation, 2048-d pooled
features, Ridge alpha = 100 / (n_components * n_genes) as in HEST.
Deviation from HEST: the Ridge fits an intercept. HEST fits none on PCA-centred features, which leaves
predictions centred at zero; PCC is the same either way, but MSE/MAE are only meaningful with it.

Fitting is one streaming pass (memory does not grow with the number of spots): per batch of features the
sums, the feature x feature and feature x target cross-products are accumulated in float64, and the
same model as scikit-learn's ``make_pipeline(StandardScaler(), PCA(k, svd_solver="full"), Ridge(alpha))``
is then solved in closed form (``StreamingProbe``). HEST's scikit-learn PCA picks a randomized solver at
this size, an approximation of this exact one.
"""
import numpy as np
from tqdm.auto import tqdm

from bench.method import Method, PatchSpec, SpotData
from bench.nn.batching import PatchBatches, to_tensor
from bench.nn.torch_utils import imagenet_normalise, torchvision_backbone


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
    description = "frozen torchvision encoder -> StandardScaler + PCA(256) -> Ridge (HEST-style)"
    # One forward pass of a frozen ResNet-50 over every spot, then a closed-form fit: one GPU, under an hour.
    resources = {"gpus": 1, "cpus": 8, "mem_gb": 16, "time_min": 60}

    def __init__(self, encoder: str = "resnet50", patch_px: int = 224, window_um: float = 165.0,
                 n_components: int = 256, batch_size: int = 64):
        self.encoder = encoder
        self.patch_px = patch_px
        self.window_um = window_um
        self.n_components = n_components
        self.batch_size = batch_size

    def patch_spec(self) -> PatchSpec:
        return PatchSpec(window_um=self.window_um, px=self.patch_px)

    def fit(self, train: SpotData) -> "LinearProbe":
        import torch

        model, used_pretrained = torchvision_backbone(self.encoder, self.runtime.pretrained)
        self.runtime.facts["pretrained"] = used_pretrained
        # Keep everything up to the pooled features: drop the ImageNet classifier.
        if hasattr(model, "fc"):
            model.fc = torch.nn.Identity()
        elif hasattr(model, "classifier"):
            model.classifier = torch.nn.Identity()
        else:
            raise ValueError(f"encoder {self.encoder!r}: no 'fc' or 'classifier' head to remove")
        self.model_ = model.eval().to(self.runtime.device)
        probe = StreamingProbe()
        n_features = 0
        for rows, features in self._features(train):
            probe.update(features, train.expression[rows])
            n_features = features.shape[1]
        n_components = min(self.n_components, len(train), n_features)
        alpha = 100.0 / (n_components * train.n_genes)
        self.regressor_ = probe.solve(n_components, alpha)
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        out = np.empty((len(test), len(self.regressor_.intercept_)))
        for rows, features in self._features(test):
            out[rows] = self.regressor_.predict(features)
        return out

    def _features(self, data: SpotData, rows_per_chunk: int = 1024):
        """Yields (row indices, float64 features) about ``rows_per_chunk`` rows at a time, in spot order
        (a few batches at once: the cross-products run faster on bigger blocks)."""
        import torch

        chunks, rows = [], []
        batches = PatchBatches(data.patches, self.batch_size)
        with torch.inference_mode():
            for batch_rows, patches in tqdm(batches, total=len(batches.batch_indices()),
                                            desc=f"{self.name} features", disable=not self.runtime.progress,
                                            leave=False):
                images = imagenet_normalise(to_tensor(patches, self.runtime.device))
                chunks.append(self.model_(images).float().cpu().numpy())
                rows.append(batch_rows)
                if sum(len(r) for r in rows) >= rows_per_chunk:
                    yield np.concatenate(rows), np.concatenate(chunks).astype(np.float64)
                    chunks, rows = [], []
        if rows:
            yield np.concatenate(rows), np.concatenate(chunks).astype(np.float64)
