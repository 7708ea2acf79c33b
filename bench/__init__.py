"""stbench: a benchmark suite for predicting spatial gene expression from H&E histology."""

__version__ = "0.1.0"
