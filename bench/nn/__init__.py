"""Building blocks for method files: layers, spot graphs, retrieval, the epoch loop, augmentation, batching,
whole-slide batches and torch helpers. A method author needs this package and ``bench/method.py`` only."""
