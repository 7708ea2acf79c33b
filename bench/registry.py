"""Discovery of methods and datasets.

Built-in methods live one per file in the project's ``methods/`` folder and datasets in ``datasets/``.
Those folders are *not* Python packages: each file is loaded from its path under a private module
name (``stbench.methods.<file>``, ``stbench.datasets.<file>``: also their loggers' names; nothing
else is called ``stbench``, the suite's own package being ``bench``). That keeps a top-level ``datasets`` package out of
``sys.path``, where it would shadow Hugging Face's ``datasets`` for anyone running from the repo root.

Extra method folders (your own, outside the repo) are listed in the environment variable
``STBENCH_METHODS_PATH`` (separated like PATH), and extra dataset folders in ``STBENCH_DATASETS_PATH``
(each file a module with ``NAME`` and ``load(root)``). Separately installed packages add methods through
the entry-point group ``stbench.methods`` (each entry point names a ``Method`` subclass) and datasets
through ``stbench.datasets`` (each names a module with ``NAME`` and ``load(root)``).

Listing what exists (``bench list``, ``--help``) reads the plug-in files without running them
(``method_catalogue``, ``dataset_names``): importing every method would import torch and each method's
dependencies, which takes seconds and is not needed to print a name and a sentence.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
METHODS_DIR = PROJECT_ROOT / "methods"
DATASETS_DIR = PROJECT_ROOT / "datasets"
METHOD_ENTRY_POINTS = "stbench.methods"
DATASET_ENTRY_POINTS = "stbench.datasets"
METHODS_PATH_ENV = "STBENCH_METHODS_PATH"
DATASETS_PATH_ENV = "STBENCH_DATASETS_PATH"
_PLUGIN_PACKAGE = "stbench"


class UnknownNameError(KeyError):
    """A method, dataset or protocol name the suite does not know; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _load_module_from_path(path: Path, kind: str) -> types.ModuleType:
    # Files from different folders may share a stem; the folder's hash keeps their module names apart.
    # (hashlib, not hash(): the name must be the same in every process, for pickling.)
    folder = "" if path.parent in (METHODS_DIR, DATASETS_DIR) else \
        "_" + hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:8]
    name = f"{_PLUGIN_PACKAGE}.{kind}.{path.stem}{folder}"
    if name in sys.modules:
        return sys.modules[name]
    # Register empty parent packages so the plug-in modules are importable (and picklable) by name.
    for parent in (_PLUGIN_PACKAGE, f"{_PLUGIN_PACKAGE}.{kind}"):
        if parent not in sys.modules:
            pkg = types.ModuleType(parent)
            pkg.__path__ = []
            sys.modules[parent] = pkg
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _is_method_class(obj) -> bool:
    """A subclass of ``bench.method.Method``, recognised by its class hierarchy: the registry sits below every
    other module of the suite (the data layer finds dataset plug-ins through it), so it does not import
    ``bench.method``."""
    return isinstance(obj, type) and any(base.__module__ == "bench.method" and base.__qualname__ == "Method"
                                         for base in obj.__mro__)


def _extra_dirs(env: str) -> list[Path]:
    """The folders listed in an environment variable, separated like PATH."""
    return [Path(p) for p in os.environ.get(env, "").split(os.pathsep) if p]


def _plugin_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def clear_caches() -> None:
    """Forget discovered plug-ins (after changing STBENCH_METHODS_PATH, STBENCH_DATASETS_PATH or installing
    a package)."""
    method_classes.cache_clear()
    method_catalogue.cache_clear()
    dataset_modules.cache_clear()


@lru_cache(maxsize=None)
def method_classes() -> dict[str, type]:
    """Every known method by its registry name (``Method.name``)."""
    found: dict[str, type] = {}

    def add(cls, origin: str):
        if cls.name in found and found[cls.name] is not cls:
            raise RuntimeError(f"two methods are named {cls.name!r} ({origin} and {found[cls.name].__module__})")
        found[cls.name] = cls

    for path in [f for folder in [METHODS_DIR, *_extra_dirs(METHODS_PATH_ENV)] for f in _plugin_files(folder)]:
        module = _load_module_from_path(path, "methods")
        for obj in vars(module).values():
            if (_is_method_class(obj) and obj.__qualname__ != "Method"
                    and obj.__module__ == module.__name__ and getattr(obj, "name", None)):
                add(obj, str(path))
    for ep in entry_points(group=METHOD_ENTRY_POINTS):
        cls = ep.load()
        if not _is_method_class(cls):
            raise TypeError(f"entry point {ep.name!r} in group {METHOD_ENTRY_POINTS} is not a Method subclass")
        add(cls, f"entry point {ep.value}")
    return dict(sorted(found.items()))


def get_method_class(name: str) -> type:
    """The class registered under ``name``; only the file that defines it is imported (the listing says
    which), so a run of two methods does not import the dependencies of every other."""
    catalogue = method_catalogue()
    if name not in catalogue:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(catalogue)}")
    path = Path(catalogue[name].origin)
    if path.suffix == ".py" and path.is_file():
        module = _load_module_from_path(path, "methods")
        for obj in vars(module).values():
            if _is_method_class(obj) and obj.__module__ == module.__name__ and getattr(obj, "name", None) == name:
                return obj
    classes = method_classes()  # an entry point, or a file the listing misread: the full discovery decides
    if name not in classes:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(classes)}")
    return classes[name]


@lru_cache(maxsize=None)
def dataset_modules() -> dict[str, types.ModuleType]:
    """Every known dataset module by its ``NAME``; each has ``load(root) -> Dataset``."""
    found = {}
    for path in [f for folder in [DATASETS_DIR, *_extra_dirs(DATASETS_PATH_ENV)] for f in _plugin_files(folder)]:
        module = _load_module_from_path(path, "datasets")
        if hasattr(module, "NAME") and hasattr(module, "load"):
            if module.NAME in found and found[module.NAME] is not module:
                raise RuntimeError(f"two datasets are named {module.NAME!r} ({path} and "
                                   f"{found[module.NAME].__file__})")
            found[module.NAME] = module
    for ep in entry_points(group=DATASET_ENTRY_POINTS):
        module = ep.load()
        found[module.NAME] = module
    return dict(sorted(found.items()))


def get_dataset_module(name: str) -> types.ModuleType:
    modules = dataset_modules()
    if name not in modules:
        raise UnknownNameError(f"unknown dataset {name!r}; valid datasets: {', '.join(modules)}")
    return modules[name]


# --- Listing without importing ---------------------------------------------------------------------

@dataclass(frozen=True)
class MethodInfo:
    """What ``bench list`` shows of a method, read from its source."""

    name: str
    kind: str
    description: str
    origin: str  # the file, or the entry point


_METHOD_BASE = "bench.method.Method"
_LISTED = ("name", "kind", "description")
_DEFAULTS = {"kind": "method", "description": ""}  # bench.method.Method's own values


class _NotStatic(Exception):
    """The source alone does not say what this file registers (a computed name, a base class from another
    module): the file is imported instead, as ``method_classes`` would."""


@lru_cache(maxsize=None)
def method_catalogue() -> dict[str, MethodInfo]:
    """Every known method's name, kind and description, read from the plug-in files' source: the class
    attributes of each top-level subclass of ``bench.method.Method``. A file the source does not settle is
    imported (its classes are then read as ``method_classes`` reads them). Same names as ``method_classes``."""
    found: dict[str, MethodInfo] = {}

    def add(info: MethodInfo):
        if info.name in found and found[info.name].origin != info.origin:
            raise RuntimeError(f"two methods are named {info.name!r} ({info.origin} and {found[info.name].origin})")
        found[info.name] = info

    for path in [f for folder in [METHODS_DIR, *_extra_dirs(METHODS_PATH_ENV)] for f in _plugin_files(folder)]:
        try:
            infos = _static_methods(path.read_text(), str(path), None)
        except _NotStatic:
            module = _load_module_from_path(path, "methods")
            infos = [_info(obj, str(path)) for obj in vars(module).values()
                     if (_is_method_class(obj) and obj.__qualname__ != "Method"
                         and obj.__module__ == module.__name__ and getattr(obj, "name", None))]
        for info in infos:
            add(info)
    for ep in entry_points(group=METHOD_ENTRY_POINTS):
        add(_entry_point_info(ep))
    return dict(sorted(found.items()))


def _info(cls: type, origin: str) -> MethodInfo:
    return MethodInfo(cls.name, cls.kind, cls.description, origin)


def _entry_point_info(ep) -> MethodInfo:
    origin = f"entry point {ep.value}"
    try:
        spec = importlib.util.find_spec(ep.module)  # imports the parent packages only, not the module
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            infos = _static_methods(Path(spec.origin).read_text(), origin, ep.attr)
            if len(infos) == 1:
                return infos[0]
    except (_NotStatic, ImportError, OSError, ValueError, SyntaxError):
        pass  # loaded below, with the errors loading gives
    cls = ep.load()
    if not _is_method_class(cls):
        raise TypeError(f"entry point {ep.name!r} in group {METHOD_ENTRY_POINTS} is not a Method subclass")
    return _info(cls, origin)


def _static_methods(source: str, origin: str, only: str | None) -> list[MethodInfo]:
    """The registered methods of one file's source (``only``: just the class of that name)."""
    tree = ast.parse(source)
    imported = _imported_names(tree)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    settled: dict[str, dict | None] = {}  # class name -> listed attributes (None: not a method class)

    def read(name: str) -> dict | None:
        if name in settled:
            return settled[name]
        node = classes[name]
        settled[name] = None  # a class that names itself as a base is not a method
        inherited = None
        for base in node.bases:
            dotted = _dotted(base)
            if dotted in classes:
                parent = read(dotted)
            elif dotted and _resolve(dotted, imported) == _METHOD_BASE:
                parent = dict(_DEFAULTS, name="")
            elif "name" in _class_assignments(node):
                raise _NotStatic  # a named class on a base this file imports from elsewhere
            else:
                parent = None
            if parent is not None and inherited is None:  # the first method base, as Python's MRO would
                inherited = parent
        if inherited is None:
            return None
        values = dict(inherited)
        for attr, value in _class_assignments(node).items():
            if attr in _LISTED:
                try:
                    values[attr] = ast.literal_eval(value)
                except ValueError:
                    raise _NotStatic from None
                if not isinstance(values[attr], str):
                    raise _NotStatic
        settled[name] = values
        return values

    infos = []
    for name in classes:
        if only is not None and name != only:
            continue
        values = read(name)
        if values and values["name"]:
            infos.append(MethodInfo(values["name"], values["kind"], values["description"], origin))
    return infos


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the module or object it names, for the file's top-level imports."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:  # import bench.method as m: m is bench.method
                    names[alias.asname] = alias.name
                else:  # import bench.method: the name bound is bench
                    head = alias.name.split(".")[0]
                    names[head] = head
    return names


def _resolve(dotted: str, imported: dict[str, str]) -> str:
    head, _, rest = dotted.partition(".")
    full = imported.get(head, head)
    return f"{full}.{rest}" if rest else full


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _class_assignments(node: ast.ClassDef) -> dict[str, ast.expr]:
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out[stmt.target.id] = stmt.value
    return out


def dataset_names() -> list[str]:
    """Every known dataset's ``NAME``, read from the plug-in files' source (a file without a literal
    ``NAME`` and a ``def load`` is imported and checked as ``dataset_modules`` does); entry points are
    listed by their names, unloaded."""
    names = set()
    for path in [f for folder in [DATASETS_DIR, *_extra_dirs(DATASETS_PATH_ENV)] for f in _plugin_files(folder)]:
        tree = ast.parse(path.read_text())
        assigned = {t.id: stmt.value for stmt in tree.body if isinstance(stmt, ast.Assign)
                    for t in stmt.targets if isinstance(t, ast.Name)}
        has_load = any(isinstance(n, ast.FunctionDef) and n.name == "load" for n in tree.body)
        try:
            name = ast.literal_eval(assigned["NAME"]) if has_load else None
        except (KeyError, ValueError):
            name = None
        if not isinstance(name, str):
            module = _load_module_from_path(path, "datasets")
            name = module.NAME if hasattr(module, "NAME") and hasattr(module, "load") else None
        if name:
            names.add(name)
    names.update(ep.name for ep in entry_points(group=DATASET_ENTRY_POINTS))
    return sorted(names)
