"""Negative control: predict every gene's mean over the training spots, for every test spot.

Its predictions do not vary across spots, so its per-gene Pearson r is undefined (reported as NaN and
counted). It brackets the scores from below: a method must beat knowing nothing about the image.
"""
import numpy as np

from bench.method import Method, SpotData


class TrainingMean(Method):
    name = "mean"
    description = "negative control: training mean of each gene"
    kind = "negative-control"
    resources = {"gpus": 0, "cpus": 1, "mem_gb": 4, "time_min": 30}  # no model: seconds on one core

    def __init__(self):
        pass

    def fit(self, train: SpotData) -> "TrainingMean":
        self.mean_ = train.expression.mean(axis=0)
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        return np.tile(self.mean_, (len(test), 1))
