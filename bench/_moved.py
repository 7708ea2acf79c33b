"""Old module paths of stbench 0.1 (one flat ``bench/`` folder) and where each now lives.

A plug-in method or dataset file written against an old path (``from bench.patches import PatchSpec``)
gets one ImportError naming the new module, instead of a bare "No module named ...".
"""
from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "bench.formats": "bench.data.formats", "bench.download": "bench.data.download",
    "bench.locations": "bench.data.locations", "bench.splits": "bench.data.splits",
    "bench.preprocess": "bench.data.preprocess", "bench.patches": "bench.data.patches",
    "bench.inputs": "bench.run.inputs",
    "bench.layers": "bench.nn.layers", "bench.graph": "bench.nn.graph", "bench.retrieval": "bench.nn.retrieval",
    "bench.training": "bench.nn.training", "bench.augment": "bench.nn.augment", "bench.batching": "bench.nn.batching",
    "bench.slides": "bench.nn.slides", "bench.torch_utils": "bench.nn.torch_utils",
    "bench.config": "bench.run.config", "bench.runner": "bench.run.runner", "bench.executors": "bench.run.executors",
    "bench.job": "bench.run.job", "bench.tracking": "bench.run.tracking", "bench.timing": "bench.run.timing",
    "bench.system_metrics": "bench.run.system_metrics", "bench.provenance": "bench.run.provenance",
    "bench.metrics": "bench.evaluation.metrics", "bench.stats": "bench.evaluation.stats",
    "bench.clustering": "bench.evaluation.clustering", "bench.evaluate": "bench.evaluation.evaluate",
    "bench.report_data": "bench.report.data", "bench.report_figures": "bench.report.figures",
    "bench.report_maps": "bench.report.maps", "bench.report_sections": "bench.report.sections",
    "bench.report_browser": "bench.report.browser", "bench.report_html": "bench.report.formatting",
}


class MovedModuleError(ModuleNotFoundError):
    pass


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            raise MovedModuleError(f"{fullname} moved to {MOVED[fullname]} (bench/ is organised in one package "
                                   f"per stage since stbench 0.2); change the import to {MOVED[fullname]}",
                                   name=fullname)
        return None


def install_moved_module_finder() -> None:
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())  # last: only names nothing else found reach it
