"""stbench: a benchmark suite for predicting spatial gene expression from H&E histology.

One package per stage, imported in one direction (a test keeps it so):
``bench.registry`` (plug-in discovery) -> ``bench.data`` (datasets, splits, gene panel and targets, patches)
-> ``bench.records`` (what a job folder is) -> ``bench.method`` and ``bench.nn`` (what a method file builds on)
-> ``bench.evaluation`` (scores and statistics, pure) -> ``bench.run`` (jobs, executors, MLflow)
-> ``bench.report`` (the HTML page) -> ``bench.cli`` (composes them).
"""
from bench._moved import install_moved_module_finder

__version__ = "0.1.0"

install_moved_module_finder()
