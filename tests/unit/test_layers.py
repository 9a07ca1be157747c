"""The architecture holds: every import among hpcft, trainers and hydra_plugins (those inside functions included)
runs from a higher layer to a lower one or within a layer, never back up; no import circle; no import of another
module's `_private` name; no function over 80 lines. The layers are README's "Architecture" section."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from support import ROOT

PACKAGES = ("hpcft", "trainers", "hydra_plugins")

# lowest first; a module belongs to the first layer whose prefix it has (longest prefix wins)
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("base", ("hpcft.errors", "hpcft.exitcodes", "hpcft.paths", "hpcft.timefmt", "hpcft.states", "hpcft.assets")),
    ("slurm", ("hpcft.slurm",)),
    ("config", ("hpcft.config",)),
    ("rundir", ("hpcft.rundir",)),
    ("ledger", ("hpcft.ledger",)),
    ("train", ("hpcft.train",)),
    ("trainers", ("trainers",)),
    ("registry", ("hpcft.registry",)),
    ("jobs", ("hpcft.jobs",)),
    ("cli", ("hpcft.cli", "hpcft.web", "hydra_plugins")),  # hpcft.web: the console, beside the CLI
    ("entry", ("hpcft.__main__", "hpcft.worker")),  # `python -m hpcft`, and the 0.1 worker path kept for old scripts
]
MAX_FUNCTION_LINES = 80


def modules() -> Dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if module == "hpcft":
        return 0  # the package's __init__: a version string
    assert rank is not None, f"{module}: in no layer; add it to LAYERS (and to README's Architecture section)"
    return rank


def imports(module: str, path: Path, known: Dict[str, Path]) -> Iterator[Tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import of a known module, at any depth."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    yield resolve(a.name, known), "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (sub, "", node.lineno) if sub in known else (resolve(base, known), a.name, node.lineno)


def resolve(name: str, known: Dict[str, Path]) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    known = modules()
    edges: Dict[str, Set[str]] = {m: set() for m in known}
    private = []
    for m, path in known.items():
        for target, name, line in imports(m, path, known):
            if target and target != m:
                edges[m].add(target)
            if name.startswith("_") and not name.startswith("__") and target != m:
                private.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{name}")
    return edges, private


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_circles():
    edges, _ = graph()
    assert circles(edges) == []


def test_the_checker_finds_a_circle_and_an_upward_import():  # the control: the checks above can fail
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    assert layer("hpcft.ledger.store") > layer("hpcft.config.schema")
    assert layer("hpcft.cli.jobs") > layer("hpcft.jobs.submit") > layer("hpcft.registry.names")


def test_imports_run_downward_only():
    edges, _ = graph()
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, targets in sorted(edges.items()) for t in sorted(targets) if layer(t) > layer(m)]
    assert upward == []


def test_no_module_imports_another_modules_private_name():
    _, private = graph()
    assert private == []


def test_at_most_nine_modules_directly_in_the_package():
    top = sorted(p.name for p in (ROOT / "hpcft").glob("*.py"))
    assert len(top) <= 9, top
    for group in ("config", "ledger", "rundir", "registry", "slurm", "jobs", "train", "cli"):
        assert (ROOT / "hpcft" / group / "__init__.py").exists(), group


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_function_over_80_lines(pkg):
    long = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert long == []


def test_test_file_names_are_unique_across_the_folders():
    """pytest imports test files by their base name (no __init__.py in the test folders): two with one name in
    different folders stop the collection of any run that takes both."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
