"""The layout's rules hold (docs/architecture.md): imports point one way, no cycles, one idea per file said first."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "model", "pipelines", "jobs")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports anywhere (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule (and runs pkg/__init__, which is never a program)
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if n in known] or [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


GRAPH = {name: imports_of(path, set(modules())) - {name} for name, path in modules().items()}


def cycle_from(start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for target in GRAPH.get(node, ()):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def test_no_import_cycles():
    cycles = [c for c in (cycle_from(m) for m in GRAPH) if c]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles[:5])


def package_of(module: str) -> str:
    """pipelines.training.loop -> pipelines.training; model.flux -> model; pipelines.storage -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipelines" and len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which package imports which (lazy imports included), from the module graph."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(package_of(module), set()).update(package_of(t) for t in targets)
    return {p: t - {p} for p, t in out.items()}


def package_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per package that reaches itself, with the module imports that close the loop."""
    packages = package_graph(graph)
    found = []
    for start in sorted(packages):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            if start in packages.get(node, ()):
                hops = path + [start]
                why = [next(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                            if package_of(m) == a and package_of(t) == b) for a, b in zip(hops, hops[1:])]
                found.append(" -> ".join(hops) + f" ({'; '.join(why)})")
                break
            for target in packages.get(node, ()):
                if target not in seen:
                    seen.add(target)
                    stack.append((target, path + [target]))
    return found


def test_no_package_cycles():
    """Subpackages (pipelines.corpus, .training, .evaluation, .models, .runs, ...) import each other one way."""
    cycles = package_cycles(GRAPH)
    assert not cycles, " ; ".join(cycles[:5])


def test_package_cycle_finder_finds_a_cycle():
    graph = {"pipelines.a.x": {"pipelines.b.y"}, "pipelines.b.y": set(), "pipelines.b.z": {"pipelines.a.w"},
             "pipelines.a.w": set()}
    assert package_cycles(graph)[0].startswith("pipelines.a -> pipelines.b -> pipelines.a")
    assert not package_cycles({"pipelines.a.x": {"pipelines.b.y"}, "pipelines.b.y": {"schemas"}})


def test_cycle_finder_finds_a_cycle():
    GRAPH["x.a"], GRAPH["x.b"] = {"x.b"}, {"x.a"}
    try:
        assert cycle_from("x.a") == ["x.a", "x.b", "x.a"]
    finally:
        del GRAPH["x.a"], GRAPH["x.b"]


def _outside(module: str, allowed: tuple[str, ...]) -> set[str]:
    return {t for t in GRAPH[module] if not t.startswith(allowed)}


@pytest.mark.parametrize("prefix, allowed", [
    ("schemas", ("schemas",)),                        # the contract imports nothing of ours
    ("model", ("model", "schemas")),                  # plain torch
    ("pipelines.errors", ("pipelines.errors",)),       # every package raises UserError: it imports nothing
    ("pipelines.models", ("pipelines.models", "pipelines.storage", "pipelines.errors", "schemas")),
    ("pipelines.storage", ("pipelines.errors", "schemas")),
    ("pipelines.raylocal", ("pipelines.errors", "schemas")),
    ("pipelines.corpus", ("pipelines.corpus", "pipelines.models", "pipelines.storage", "pipelines.raylocal",
                          "pipelines.errors", "model", "schemas")),
    # what a run leaves, read by training and evaluation alike: neither of them
    ("pipelines.runs", ("pipelines.runs", "pipelines.storage", "pipelines.errors", "model", "schemas")),
    # evaluation reads what corpus and training write: decode, tags and the corpus check; the weights of any run
    ("pipelines.evaluation", ("pipelines.evaluation", "pipelines.corpus.audio", "pipelines.corpus.tags",
                              "pipelines.corpus.check",
                              "pipelines.runs", "pipelines.models", "pipelines.storage", "pipelines.errors",
                              "pipelines.raylocal", "model", "schemas")),
])
def test_imports_point_one_way(prefix, allowed):
    wrong = {m: sorted(_outside(m, allowed)) for m in GRAPH if m == prefix or m.startswith(prefix + ".")}
    assert not {m: t for m, t in wrong.items() if t}


def test_every_file_says_its_idea_first():
    missing = [str(p.relative_to(REPO)) for p in modules().values() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing
