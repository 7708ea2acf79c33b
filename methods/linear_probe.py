"""Linear probe (HEST-Benchmark style): frozen image encoder -> StandardScaler + PCA(256) -> Ridge.

A strong, cheap reference point: the encoder is never trained, so what it scores measures how much
expression is linearly readable from generic image features. Scaler, PCA and Ridge are fit on the
training spots only.

Defaults: torchvision ResNet-50 (ImageNet weights when they can be had; see ``Runtime.pretrained``),
224 px patches of the common 165 µm window, ImageNet mean/std input normalisation, 2048-d pooled
features, Ridge alpha = 100 / (n_components * n_genes) as in HEST.
Deviation from HEST: the Ridge fits an intercept. HEST fits none on PCA-centred features, which leaves
predictions centred at zero; PCC is the same either way, but MSE/MAE are only meaningful with it.
"""
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from bench.batching import PatchBatches, to_tensor
from bench.method import Method, SpotData
from bench.patches import PatchSpec
from bench.torch_utils import imagenet_normalise, torchvision_backbone


class LinearProbe(Method):
    name = "linear-probe"
    description = "frozen torchvision encoder -> StandardScaler + PCA(256) -> Ridge (HEST-style)"

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
        features = self._features(train)
        n_components = min(self.n_components, features.shape[0], features.shape[1])
        alpha = 100.0 / (n_components * train.n_genes)
        self.regressor_ = make_pipeline(StandardScaler(), PCA(n_components, random_state=self.runtime.seed),
                                        Ridge(alpha=alpha))
        self.regressor_.fit(features, train.expression)
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        return self.regressor_.predict(self._features(test))

    def _features(self, data: SpotData) -> np.ndarray:
        import torch

        chunks = []
        batches = PatchBatches(data.patches, self.batch_size)
        with torch.inference_mode():
            for _, patches in tqdm(batches, total=len(batches.batch_indices()), desc=f"{self.name} features",
                                   disable=not self.runtime.progress, leave=False):
                images = imagenet_normalise(to_tensor(patches, self.runtime.device))
                chunks.append(self.model_(images).float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float64)
