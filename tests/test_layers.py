"""The package's floors: every import goes down (a package imports only packages on a lower
floor) and no module imports itself back through others, at any depth, counting imports inside
functions too. LAYERS is the picture docs/architecture.md draws; a new package must take a floor
here before it can be imported from anywhere."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "autotune"

# floor -> packages (a module directly under autotune/ is its own package)
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "failpoints", "slo"),
    1: ("types", "config", "host"),
    2: ("histogram", "cgroupfs"),
    3: ("detect",),  # the metric vocabulary and its registry: the sensors run what it declares
    4: ("sensors",),  # monitor
    5: ("store", "knobs"),
    6: ("journal", "audit", "helper"),
    7: ("diagnose", "fix", "verify"),  # diagnose, fix, verify: none imports another
    8: ("agent", "gate", "workload", "review"),
    9: ("demo",),
    10: ("cli",),
    11: ("__main__", "__init__"),
}
FLOOR = {pkg: floor for floor, pkgs in LAYERS.items() for pkg in pkgs}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it), resolved to the longest
    existing module name (``from autotune.knobs import KNOBS`` is autotune.knobs)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                cands = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            for c in cands:
                while c and c not in mods:
                    c = c.rpartition(".")[0]
                if c and c != name and c != "autotune":
                    graph[name].add(c)
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_floor():
    pkgs = {_package(m) for m in _modules()}
    assert sorted(pkgs - set(FLOOR)) == []


def test_every_import_goes_down_a_floor():
    mods = _modules()
    up = sorted(f"{src} -> {dst}" for src, dsts in _imports(mods).items() for dst in dsts
                if _package(src) != _package(dst) and FLOOR[_package(src)] <= FLOOR[_package(dst)])
    assert up == []


def test_no_module_imports_itself_back():
    graph = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The checks are not vacuous: a store module importing the agent, and two modules
    importing each other, are both found."""
    import tests.test_layers as me

    pkg = tmp_path / "autotune"
    for d in ("store", "agent"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "a.py").write_text("from autotune.agent.b import x\n")
    (pkg / "agent" / "b.py").write_text("def f():\n    from autotune.store.a import y\n")
    monkeypatch.setattr(me, "ROOT", pkg)
    graph = me._imports(me._modules())
    assert graph["autotune.store.a"] == {"autotune.agent.b"} and graph["autotune.agent.b"] == {"autotune.store.a"}
    try:
        me.test_every_import_goes_down_a_floor()
    except AssertionError as err:
        assert "autotune.store.a -> autotune.agent.b" in str(err)
    else:
        raise AssertionError("the upward import was not seen")
    try:
        me.test_no_module_imports_itself_back()
    except AssertionError as err:
        assert "autotune.agent.b" in str(err)
    else:
        raise AssertionError("the cycle was not seen")
