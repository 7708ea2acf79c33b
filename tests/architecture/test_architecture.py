"""The package layout keeps one direction of imports: no module of bench/ imports, directly or through
others, a module that imports it back, and no stage imports a later one."""
from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Stages from lowest to highest; a module may import its own stage and lower ones only.
STAGES = ["bench.errors", "bench.paths", "bench.plugins", "bench.data", "bench.records", "bench.parameters", "bench.method",
          "bench.registry", "bench.nn", "bench.evaluation", "bench.run", "bench.report", "bench.pipeline",
          "bench.testing", "bench.cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bench_imports(path: Path, modules: set[str]) -> set[str]:
    """Every bench module a file imports, at the top or inside a function (a lazy import is still an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
            for alias in node.names:  # `from bench.report import figures` imports bench.report.figures
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in BENCH.rglob("*.py")}
    return {name: bench_imports(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def stage_of(module: str) -> int:
    matches = [i for i, s in enumerate(STAGES) if module == s or module.startswith(s + ".")]
    return matches[-1] if matches else -1


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_bench():
    graph = import_graph()
    assert len(graph) > 30  # the walk really saw the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_stage_imports_a_later_stage():
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
              if stage_of(m) >= 0 and stage_of(d) > stage_of(m)]
    assert not upward, "a lower stage imports a higher one: " + "; ".join(sorted(upward))


def test_the_runner_does_not_import_evaluation_or_report():
    deps = import_graph()["bench.run.runner"]
    assert not any(d.startswith(("bench.report", "bench.evaluation.evaluate")) for d in deps), deps


def test_method_files_need_only_bench_method_and_bench_nn():
    methods = Path(__file__).resolve().parents[2] / "methods"
    for path in methods.glob("*.py"):
        used = {n.module for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("bench")}
        assert all(m == "bench.method" or m.startswith("bench.nn") for m in used), (path.name, used)
