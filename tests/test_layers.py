"""The package's architecture, checked from its source: which subpackage may import which, no import
cycle between subpackages nor between modules, ``__all__`` in every module, and no module over 400 lines.

The imports are read with ``ast`` (nothing is imported, so a lazy import inside a function counts
as much as one at the top). Layers, lowest first:

* ``utils`` (seeding, argument checks) and ``kernels`` (Triton, used by ``ops`` only);
* ``ops`` (the K-choice op), ``theory`` (pure math), ``store`` (the round store), ``plots``;
* ``metrics``; then ``models``, ``data``; then ``classifiers``, ``rewards``;
* ``loop`` and ``preference``; on top ``experiments`` and ``cli``.

``utils`` and ``theory`` are pure and every layer above ``ops`` may use them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lightning_curate"
KERNELS = REPO / "kernels"  # ships as lightning_curate.kernels (pyproject's package-dir)
MAX_LINES = 400

PURE = {"utils", "theory"}
BELOW_LOOP = PURE | {"ops", "store", "metrics", "plots", "models", "data", "classifiers", "rewards"}
# What each subpackage may import from the rest of lightning_curate (its own modules aside).
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "kernels": set(),  # standalone Triton code: the op dispatches to it, never the other way
    "ops": {"utils", "kernels"},
    "theory": {"utils"},  # pure math: no Lightning, no loop, no op
    "store": {"utils"},
    "plots": {"utils"},  # draws what it is given (rows, samples, summaries)
    "metrics": PURE,
    "models": PURE,  # a generator knows nothing of data, rewards or the loop
    "data": PURE | {"metrics", "store"},  # store: only the blending DataModule (FILE_ONLY)
    "classifiers": PURE | {"data", "metrics"},  # trains on a DataSource; data never imports classifiers
    "rewards": PURE | {"data", "classifiers"},  # classifiers: only the classifier rewards (FILE_ONLY)
    "preference": BELOW_LOOP - {"plots"},
    "loop": BELOW_LOOP,  # talks to generators through the Generator interface
    "experiments": BELOW_LOOP | {"loop", "preference"},  # runs `lightning_curate fit` as a subprocess, not cli
    "diagnostics": BELOW_LOOP | {"loop", "experiments"},  # `lightning-curate diagnose`: reopens and refits runs
    "cli": BELOW_LOOP | {"loop", "preference", "diagnostics"},
}
# A dependency that only one file of a subpackage may have.
FILE_ONLY = {
    ("data", "store"): {"lightning_curate/data/blending.py"},
    ("rewards", "classifiers"): {"lightning_curate/rewards/classifier.py"},
}
# The package's own __init__ re-exports the public API (anything but the console script);
# __main__ is the console script.
TOP_LEVEL = {"__init__": set(ALLOWED) - {"cli"}, "__main__": {"cli"}}
# Modules still over MAX_LINES while someone splits them: {path: why}. Empty since
# ops/kchoice.py, classifiers/classifier.py and data/images.py were split.
LONG_FOR_NOW: dict[str, str] = {}


def modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of the package, kernels included."""
    found = []
    for base, dotted in ((PACKAGE, "lightning_curate"), (KERNELS, "lightning_curate.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            found.append((".".join([dotted, *parts]), path))
    return found


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def layer_of(module: str) -> str:
    """``lightning_curate.data.blending`` -> ``data``; ``lightning_curate.cli`` -> ``cli``;
    the package itself -> ``__init__``; a name of the package's namespace (``lightning_curate.kchoice``)
    -> ``__init__``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__init__":
        return "__init__"
    first = parts[1]
    if first == "kernels" or (PACKAGE / first).is_dir() or (PACKAGE / f"{first}.py").is_file():
        return first
    return "__init__"


def imported(module: str, path: Path, root: str = "lightning_curate") -> set[str]:
    """The ``root`` modules (or names) ``path`` imports, relative imports resolved."""
    package = module.split(".")[:-1]  # a module's package; for an __init__, the package itself
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = package[: len(package) - node.level + 1]
                base = ".".join(stem + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in out if name.split(".")[0] == root}


def edges() -> list[tuple[str, str, str, str]]:
    """(file, its layer, imported name, that name's layer) for every import across layers."""
    found = []
    for module, path in modules():
        source = layer_of(module) if not module.endswith("__main__") else "__main__"
        for name in sorted(imported(module, path)):
            target = layer_of(name)
            if target != source:
                found.append((rel(path), source, name, target))
    return found


def test_every_subpackage_has_a_layer():
    layers = {layer_of(module) for module, _ in modules()} - set(TOP_LEVEL)
    assert layers <= set(ALLOWED), f"new subpackages {sorted(layers - set(ALLOWED))}: give them a row in ALLOWED"


def test_imports_follow_the_layers():
    bad = []
    for file, source, name, target in edges():
        allowed = TOP_LEVEL[source] if source in TOP_LEVEL else ALLOWED.get(source, set())
        if target not in allowed:
            bad.append(f"{file} ({source}) imports {name} ({target})")
        elif (source, target) in FILE_ONLY and file not in FILE_ONLY[source, target]:
            bad.append(f"{file} imports {name}: only {sorted(FILE_ONLY[source, target])} of {source} may use {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


# Subpackages that must run without Lightning (pure math, the op, the store, the figures).
NO_LIGHTNING = {"utils", "kernels", "ops", "theory", "store", "plots"}
LIGHTNING_MODULES = ("lightning", "pytorch_lightning", "torchmetrics")


def test_lower_layers_need_no_lightning():
    bad = []
    for module, path in modules():
        if layer_of(module) not in NO_LIGHTNING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{rel(path)} imports {n}" for n in names if n.split(".")[0] in LIGHTNING_MODULES]
    assert not bad, "Lightning in a layer that must not need it:\n" + "\n".join(bad)


def test_no_import_cycles_between_subpackages():
    graph: dict[str, set[str]] = {}
    for _, source, _, target in edges():
        if source not in TOP_LEVEL and target not in TOP_LEVEL:
            graph.setdefault(source, set()).add(target)
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle between subpackages: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def module_graph(found: list[tuple[str, Path]], root: str = "lightning_curate") -> dict[str, set[str]]:
    """Which module imports which: ``from x import name`` counts as ``x.name`` where that is a module,
    else as ``x`` (a package's ``x.__init__``). Lazy imports count like the others."""
    names = {module for module, _ in found}

    def module_of(name: str) -> str | None:
        for candidate in (name, name.rsplit(".", 1)[0]):
            for module in (candidate, f"{candidate}.__init__"):
                if module in names:
                    return module
        return None

    graph: dict[str, set[str]] = {}
    for module, path in found:
        targets = {module_of(name) for name in imported(module, path, root)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_import_cycles_between_modules():
    """Not even through a lazy import: two modules that need each other are one concept, or a third
    module is missing (what both need)."""
    graph = module_graph(modules())
    cycles = import_cycles(graph)
    assert not cycles, "import cycles between modules:\n" + "\n".join(
        " <-> ".join(c) + "  (" + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) + ")"
        for c in cycles)


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    """The checker itself, on a synthetic graph and on a tiny package with a lazy cycle through its
    ``__init__`` (``from pkg import b`` where ``b`` is a module, and ``from pkg import thing``)."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b"], ["c", "d"]]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    files = {"__init__.py": "from pkg.a import thing\n", "a.py": "def thing():\n    from pkg import b\n",
             "b.py": "from .c import helper\n", "c.py": "x = 1\n\ndef helper():\n    from pkg import thing\n"}
    for name, text in files.items():
        (pkg / name).write_text(text)
    found = [(f"pkg.{Path(name).stem}", pkg / name) for name in files]
    graph = module_graph(found, root="pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.c"] == {"pkg.__init__"}
    assert import_cycles(graph) == [["pkg.__init__", "pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "c.py").write_text("x = 1\n")  # the cycle broken: none left
    assert import_cycles(module_graph(found, root="pkg")) == []


def test_the_layer_table_itself_has_no_cycle():
    """The allowed graph must be a hierarchy, or the test above could pass on a cycle it permits."""
    order: list[str] = []
    pending = dict(ALLOWED)
    while pending:
        ready = sorted(k for k, deps in pending.items() if deps <= set(order))
        assert ready, f"ALLOWED has a cycle among {sorted(pending)}"
        order += ready
        for k in ready:
            del pending[k]


@pytest.mark.parametrize("module, path", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_module_defines_all(module, path):
    if module.endswith("__main__"):  # the console script: runs main(), exports nothing
        return
    tree = ast.parse(path.read_text())
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    names |= {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)
              and isinstance(node.target, ast.Name)}
    assert "__all__" in names, f"{rel(path)} has no __all__"


def test_no_module_over_the_line_limit():
    lengths = {rel(path): len(path.read_text().splitlines()) for _, path in modules()}
    long = {p: n for p, n in lengths.items() if n > MAX_LINES and p not in LONG_FOR_NOW}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"
    stale = [p for p in LONG_FOR_NOW if lengths.get(p, 0) <= MAX_LINES]
    assert not stale, f"LONG_FOR_NOW lists modules that are no longer long (or gone): {stale}"


def test_one_list_of_choice_modes():
    """ops and theory name the K-choice modes from one constant (utils.MODES)."""
    from lightning_curate import ops, utils

    assert ops.MODES == utils.MODES == ("softmax", "argmax", "uniform")


def test_the_checker_sees_imports():
    """The parser itself: relative and absolute imports, lazy ones, and layers of names."""
    assert layer_of("lightning_curate.data.blending") == "data"
    assert layer_of("lightning_curate.kchoice") == "__init__" and layer_of("lightning_curate") == "__init__"
    assert layer_of("lightning_curate.cli.main") == "cli" and layer_of("lightning_curate.kernels.x") == "kernels"
    found = {(file, name) for file, _, name, _ in edges()}
    assert ("lightning_curate/data/blending.py", "lightning_curate.store.rounds.RoundStore") in found
    assert ("lightning_curate/rewards/geometric.py", "lightning_curate.data.toy2d.mode_centers") in found  # lazy


@pytest.mark.parametrize("package", sorted({module.rsplit(".", 1)[0] for module, path in modules()
                                            if path.name == "__init__.py"}))
def test_package_exports_resolve(package):
    """Every name a package's ``__all__`` promises imports from it."""
    import importlib

    mod = importlib.import_module(package)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"


def column_prefix_uses(found: list[tuple[str, Path]]) -> list[str]:
    """Where a module spells a family of round columns by hand: a string that is a family's prefix
    (``"share_"``, ``"_stderr"``), or an f-string that starts with one (``f"share_{name}"``)."""
    from lightning_curate.utils import columns

    prefixes = {f.prefix for f in vars(columns).values() if isinstance(f, columns.Family)}
    prefixes |= {f.prefix for f in columns.ONE_CURATOR_PREDICTIONS} | {columns.STDERR}
    bad = []
    for module, path in found:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                texts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
                if (texts and isinstance(node.values[0], ast.Constant) and texts[0].startswith(tuple(prefixes))) \
                        or columns.STDERR in texts:
                    bad.append(f"{module}:{node.lineno}")
            elif isinstance(node, ast.Constant) and node.value in prefixes:
                bad.append(f"{module}:{node.lineno}")
    return sorted(set(bad), key=lambda where: (where.rsplit(":", 1)[0], int(where.rsplit(":", 1)[1])))


def test_round_columns_are_named_in_one_place():
    """The families of round columns (per class, per curator, the standard errors) are spelled in
    lightning_curate.utils.columns only; everyone else builds and parses them through it."""
    found = [(m, p) for m, p in modules() if m != "lightning_curate.utils.columns"]
    bad = column_prefix_uses(found)
    assert not bad, "round columns spelled by hand (use lightning_curate.utils.columns): " + ", ".join(bad)


def test_the_column_checker_sees_hand_spelled_prefixes(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('def f(row, name, key):\n    a = [k for k in row if k.startswith("share_")]\n'
                    '    b = f"predicted_share_{name}"\n    c = f"{key}_stderr"\n    return "reward_mean", a, b, c\n')
    assert column_prefix_uses([("m", path)]) == ["m:2", "m:3", "m:4"]


SCRIPTS = REPO / "scripts"


def test_the_package_never_imports_scripts():
    """scripts/ may import anything from the package; the package (what users install) never imports a script."""
    names = {path.stem for path in SCRIPTS.glob("*.py")}
    assert names, "no scripts found: the check would pass on nothing"
    bad = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            found = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{rel(path)} imports {n}" for n in found if n.split(".")[0] in names | {"scripts"}]
    assert not bad, "the package imports scripts/:\n" + "\n".join(bad)


def test_scripts_import_what_the_package_has():
    """A script's ``lightning_curate`` imports name modules or names that exist (a moved module fails here)."""
    import importlib

    bad = []
    for path in sorted(SCRIPTS.glob("*.py")):
        for name in sorted(imported(f"scripts.{path.stem}", path)):
            try:
                importlib.import_module(name)
                continue
            except ModuleNotFoundError:
                pass
            parent, _, attr = name.rpartition(".")
            try:
                found = hasattr(importlib.import_module(parent), attr)
            except ModuleNotFoundError:
                found = False
            if not found:
                bad.append(f"{rel(path)} imports {name}")
    assert not bad, "scripts import what the package does not have:\n" + "\n".join(bad)
