"""The package's shape: layers import downward, no import circles, modules stay small, and
user-facing code uses the public engine API.

Known debts are listed with the issue that removes them; the list may only shrink.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "moss_pipecat"
MAX_LINES = 450

# Modules over MAX_LINES today, with the most lines each may have until it is split.
OVERSIZED: dict[str, int] = {}
# Layers, bottom first: a module may import its own layer and those below it. ``speech`` and
# ``protocol`` are pure Python (no torch); server and client are peers (never each other).
LAYERS = ["speech", "protocol", "model", "codec", "engine", "client", "server", "service"]
# Deprecated aliases kept for old imports: the server re-exports the protocol and the client.
ALIASES = {"moss_pipecat.server.client", "moss_pipecat.server.protocol", "moss_pipecat.server"}
# What the light install (no torch) imports: the pipecat services' remote path and below.
LIGHT = ("moss_pipecat.speech", "moss_pipecat.protocol", "moss_pipecat.client")


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_nodes(path: Path) -> list[ast.AST]:
    """Every import statement of ``path``, at any depth, TYPE_CHECKING blocks aside."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    imports = (ast.Import, ast.ImportFrom)
    return [n for n in ast.walk(tree) if isinstance(n, imports) and id(n) not in skip]


def _imports(path: Path) -> set[str]:
    """Modules of this package imported by ``path`` (any depth, TYPE_CHECKING blocks aside)."""
    out = set()
    for node in _import_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("moss_pipecat"):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("moss_pipecat"))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert _cycles(graph) == {frozenset("abc"), frozenset("de")}


def test_no_import_circles():
    graph = _graph()
    # A package's __init__ re-exporting its modules is not a circle of logic.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    assert not _cycles(graph)


def test_layers_import_downward():
    wrong = []
    for module, deps in _graph().items():
        layer = module.split(".")[1] if module.count(".") else ""
        if layer not in LAYERS:
            continue
        for dep in deps:
            dep_layer = dep.split(".")[1] if dep.count(".") else ""
            if dep_layer not in LAYERS or LAYERS.index(dep_layer) <= LAYERS.index(layer):
                continue
            wrong.append(f"{module} -> {dep}")
    assert not wrong


def test_modules_stay_small():
    sizes = {
        str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    too_big = {f: n for f, n in sizes.items() if n > OVERSIZED.get(f, MAX_LINES)}
    assert not too_big
    # A module that was split is taken off the list.
    assert all(sizes.get(f, 0) > MAX_LINES for f in OVERSIZED)


def test_user_code_imports_the_public_engine_api():
    """Examples and agents use ``moss_pipecat.engine``'s exports, not its modules."""
    internal = []
    for path in [*(REPO / "examples").glob("*.py"), *(REPO / "agents").glob("*.py")]:
        for dep in _imports(path):
            if dep.startswith("moss_pipecat.engine.") and dep.count(".") >= 2:
                mod = ".".join(dep.split(".")[:3])
                if (PACKAGE / "engine" / f"{mod.split('.')[-1]}.py").exists():
                    internal.append(f"{path.relative_to(REPO)}: {mod}")
    assert not internal


def test_engine_handles_use_no_private_engine_name():
    """``Session``/``TurnStream`` reach the engine only through its public API (``submit`` and
    facts such as ``config``), never through its private names or its state."""
    tree = ast.parse((PACKAGE / "engine" / "session.py").read_text())
    private = sorted(
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and ast.unparse(node.value).split(".")[-1] in ("engine", "_engine")
    )
    assert not private
    state = {"core", "sessions", "scheduler", "runner", "pools", "call"}
    reach = sorted(
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in state
        and ast.unparse(node.value).split(".")[-1] in ("engine", "_engine")
    )
    assert not reach


def _external_imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports, anywhere in it (function bodies too;
    TYPE_CHECKING blocks aside)."""
    out = set()
    for node in _import_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
    return out


def test_server_and_client_never_import_each_other():
    wrong = []
    for module, deps in _graph().items():
        if module in ALIASES:
            continue
        for dep in deps:
            for a, b in (("server", "client"), ("client", "server")):
                if module.startswith(f"moss_pipecat.{a}") and dep.startswith(f"moss_pipecat.{b}"):
                    wrong.append(f"{module} -> {dep}")
    assert not wrong


def test_the_light_path_needs_no_torch_and_no_engine():
    """The protocol, the client and the shared speech types import nothing of the engine, model,
    codec or server, nor torch or the server's libraries (lazily either: a light install has
    none), except the client's ``codes_array``/``snapshot``, which use torch when it is there."""
    heavy = {"torch", "transformers", "fastapi", "uvicorn", "ray", "safetensors", "starlette"}
    allowed = {
        "moss_pipecat.client.wire": {"torch"},
        "moss_pipecat.client.remote_session": {"torch"},
    }
    below = (
        "moss_pipecat.engine",
        "moss_pipecat.model",
        "moss_pipecat.codec",
        "moss_pipecat.server",
    )
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        if not module.startswith(LIGHT):
            continue
        for dep in _imports(path):
            if dep.startswith(below):
                wrong.append(f"{module} -> {dep}")
        for lib in _external_imports(path) & heavy - allowed.get(module, set()):
            wrong.append(f"{module} -> {lib}")
    assert not wrong
    # The remote service's own modules import the engine side only through the light path.
    remote = ["remote", "base", "reply", "phases", "interruption", "settings", "resampling"]
    remote += ["tracing", "pipecat_compat"]
    for name in [*remote, "user_audio", "user_turns"]:
        deps = _imports(PACKAGE / "service" / f"{name}.py")
        assert not [d for d in deps if d.startswith(below)], name
        assert not _external_imports(PACKAGE / "service" / f"{name}.py") & heavy, name


def test_client_classes_use_each_others_public_names_only():
    """No client module reaches a ``_private`` attribute of another object (its own ``self``
    aside; ``P._Msg`` is the protocol's message base, a type only)."""
    reach = []
    for path in (PACKAGE / "client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or ast.unparse(node.value) in ("self", "cls", "P"):
                continue
            reach.append(f"{path.name}: {ast.unparse(node)}")
    assert not reach


# ---- pipecat's private names: only in the compat module ---------------------------------------
COMPAT = PACKAGE / "service" / "pipecat_compat.py"


@functools.cache
def _pipecat_private_names() -> frozenset[str]:
    """The private names (``_x``) of every pipecat class the package imports, along their MROs:
    methods and class attributes, and the instance attributes their code sets on ``self``."""
    import importlib
    import inspect
    import textwrap

    classes = set()
    for path in PACKAGE.rglob("*.py"):
        for node in _import_nodes(path):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipecat"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    obj = getattr(module, alias.name, None)
                    if isinstance(obj, type):
                        classes.add(obj)
    names = set()
    for klass in {k for cls in classes for k in cls.__mro__}:
        if klass.__module__.startswith("pipecat"):
            names.update(n for n in vars(klass) if n.startswith("_") and not n.startswith("__"))
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
            names.update(
                n.attr
                for n in ast.walk(tree)
                if isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
                and n.attr.startswith("_")
                and not n.attr.startswith("__")
            )
    return frozenset(names)


def _pipecat_private_uses(source: str, private: frozenset[str], hooks: frozenset[str]) -> list[str]:
    """Where ``source`` touches a pipecat private name: reads or writes one (on any object),
    defines a method of that name (an override), or imports a private pipecat module or name.
    A subclass hook in ``hooks`` may be defined and called through ``super()`` only."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in private:
            if not (node.attr in hooks and ast.unparse(node.value) == "super()"):
                found.append(ast.unparse(node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in private:
            if node.name not in hooks:
                found.append(f"def {node.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipecat"):
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"import {node.module}.{p}" for p in parts if p.startswith("_")]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipecat") and any(
                    p.startswith("_") for p in alias.name.split(".")
                ):
                    found.append(f"import {alias.name}")
    return found


def test_the_private_name_finder_finds_them():
    private = _pipecat_private_names()
    assert {"_tts_contexts", "_audio_context_manager", "_register_event_handler"} <= private
    hooks = frozenset({"_update_settings"})
    source = (
        "from pipecat.utils._private import x\n"
        "class S:\n"
        "    def _update_settings(self, d):\n"
        "        super()._update_settings(d)\n"
        "        self._update_settings(d)\n"
        "        return self._tts_contexts, other._audio_context_manager.playing_context_id\n"
        "    def _interrupt_audio_contexts(self):\n"
        "        self._settings = None\n"
    )
    assert sorted(_pipecat_private_uses(source, private, hooks)) == [
        "def _interrupt_audio_contexts",
        "import pipecat.utils._private._private",
        "other._audio_context_manager",
        "self._settings",
        "self._tts_contexts",
        "self._update_settings",
    ]


def test_only_the_compat_module_touches_pipecat_private_names():
    """Every use of pipecat's internals lives in ``service/pipecat_compat.py`` (checked against
    the installed pipecat by ``tests/service/test_pipecat_compat.py``); the rest of the package
    uses pipecat's public API, and pipecat's documented subclass hooks it declares. A module
    that imports pipecat names none of pipecat's private names, not even for its own state
    (it would shadow pipecat's)."""
    from moss_pipecat.service.pipecat_compat import SUBCLASS_HOOKS

    private = _pipecat_private_names()
    touched = []
    for path in PACKAGE.rglob("*.py"):
        if path == COMPAT or "pipecat" not in _external_imports(path):
            continue  # a module without pipecat holds no pipecat object
        for use in _pipecat_private_uses(path.read_text(), private, SUBCLASS_HOOKS):
            touched.append(f"{path.relative_to(REPO)}: {use}")
    assert not touched
    # The compat module does touch them (else the check above could not fail).
    assert _pipecat_private_uses(COMPAT.read_text(), private, SUBCLASS_HOOKS)
