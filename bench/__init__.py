"""stbench: a benchmark suite for predicting spatial gene expression from H&E histology.

One package per stage, imported in one direction (tests/architecture keeps it so):
``bench.errors``, ``bench.paths`` and ``bench.plugins`` (the ground floor: what the user can fix, where the
suite's files are, loading plug-in files) -> ``bench.data`` (datasets, splits, gene panel and targets, patches)
-> ``bench.records`` (what a job folder is) -> ``bench.method`` (what a method file builds on) ->
``bench.registry`` (finding methods) -> ``bench.nn`` -> ``bench.evaluation`` (scores and statistics, pure)
-> ``bench.run`` (jobs, executors, MLflow) -> ``bench.report`` (the HTML page and the terminal table)
-> ``bench.pipeline`` (composes run, evaluate, log, report) -> ``bench.testing`` (a method's contract
checks) -> ``bench.cli`` (parses the command line).
"""

# The one place the version is written: pyproject.toml reads it from here ([tool.setuptools.dynamic]).
__version__ = "0.2.0"
