"""Discovery of methods: the built-in ``methods/`` folder, the folders in ``STBENCH_METHODS_PATH`` and the
entry-point group ``stbench.methods`` (each entry point names a ``Method`` subclass). Datasets are found
by bench.data.catalogue (re-exported here, so one import serves a plug-in author).

Listing what exists (``bench list``, ``--help``) reads the plug-in files without running them
(``method_catalogue``, ``dataset_names``): importing every method would import torch and each method's
dependencies, which takes seconds and is not needed to print a name and a sentence.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

from bench.data.catalogue import dataset_modules, dataset_names, get_dataset_module  # noqa: F401 (one import for users)
from bench.errors import InputError, UnknownNameError  # noqa: F401 (UnknownNameError: raised by the lookups here)
from bench.method import Method
from bench.paths import METHODS_DIR
from bench.plugins import METHOD_ENTRY_POINTS, METHODS_PATH_ENV, load_module_from_path, plugin_paths


def is_method_class(obj) -> bool:
    """A subclass of ``bench.method.Method`` (the base itself included)."""
    return isinstance(obj, type) and issubclass(obj, Method)


def methods_defined_in(module) -> list[type]:
    """The Method subclasses a module defines itself (not the base, nor classes it imports), named or not."""
    return [obj for obj in vars(module).values()
            if is_method_class(obj) and obj is not Method and obj.__module__ == module.__name__]


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
            raise InputError(f"two methods are named {cls.name!r} ({origin} and {found[cls.name].__module__})")
        found[cls.name] = cls

    for path in plugin_paths(METHODS_DIR, METHODS_PATH_ENV):
        module = load_module_from_path(path, "methods")
        for cls in methods_defined_in(module):
            if getattr(cls, "name", None):
                add(cls, str(path))
    for ep in entry_points(group=METHOD_ENTRY_POINTS):
        cls = ep.load()
        if not is_method_class(cls):
            raise InputError(f"entry point {ep.name!r} in group {METHOD_ENTRY_POINTS} is not a Method subclass")
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
        module = load_module_from_path(path, "methods")
        for cls in methods_defined_in(module):
            if getattr(cls, "name", None) == name:
                return cls
    classes = method_classes()  # an entry point, or a file the listing misread: the full discovery decides
    if name not in classes:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(classes)}")
    return classes[name]


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


class SourceNotStatic(Exception):
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
            raise InputError(f"two methods are named {info.name!r} ({info.origin} and {found[info.name].origin})")
        found[info.name] = info

    for path in plugin_paths(METHODS_DIR, METHODS_PATH_ENV):
        try:
            infos = methods_in_source(path.read_text(), str(path), None)
        except SourceNotStatic:
            module = load_module_from_path(path, "methods")
            infos = [_info(cls, str(path)) for cls in methods_defined_in(module) if getattr(cls, "name", None)]
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
            infos = methods_in_source(Path(spec.origin).read_text(), origin, ep.attr)
            if len(infos) == 1:
                return infos[0]
    except (SourceNotStatic, ImportError, OSError, ValueError, SyntaxError):
        pass  # loaded below, with the errors loading gives
    cls = ep.load()
    if not is_method_class(cls):
        raise InputError(f"entry point {ep.name!r} in group {METHOD_ENTRY_POINTS} is not a Method subclass")
    return _info(cls, origin)


def methods_in_source(source: str, origin: str, only: str | None) -> list[MethodInfo]:
    """The registered methods of one file's source (``only``: just the class of that name), read without
    importing it; raises ``SourceNotStatic`` when the source alone does not settle them. Public for
    ``bench.testing``'s listing check, which asks exactly what ``bench list`` asks."""
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
                raise SourceNotStatic  # a named class on a base this file imports from elsewhere
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
                    raise SourceNotStatic from None
                if not isinstance(values[attr], str):
                    raise SourceNotStatic
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
