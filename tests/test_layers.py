"""The package's import graph: one layer per pipeline stage, imports only downwards, no circles.

Every ``import`` of a deploykit module counts, also those inside functions (lazy imports keep
start-up light, they do not make an upward dependency right).
"""

from __future__ import annotations

import ast
from pathlib import Path

import deploykit

PACKAGE = Path(deploykit.__file__).resolve().parent

#: Bottom to top. A part may import its own modules and those of lower layers only (the core's
#: modules also each other: no circles, checked below).
LAYERS = [
    ("errors", "fileio", "manifest", "progressbar", "metrics"),  # core: leaves every stage shares
    ("runtime",),      # the thin runtime: no torch, no exporter, no ModelOpt
    ("data",),         # synthetic data, splits, folders, COCO, calibration feeds
    ("models",),       # PyTorch reference models and demo training
    ("export",),       # PyTorch -> ONNX, graph rules, TensorRT parser matrix
    ("compare",),      # parity, bisect, eval, bench, report against the PyTorch reference
    ("precision",),    # FP16/INT8 graphs, accuracy budgets (measured with compare)
    ("engine",),       # TensorRT build, optimisation profiles
    ("serving",),      # Triton repositories, server, client
    ("demo",),         # the demo command's pipeline
    ("cli",),          # the command line over everything
]
LEVEL = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("deploykit",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """deploykit modules ``name`` imports anywhere in its source (resolved to existing modules)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _graph()} - {None}
    assert parts == set(LEVEL), f"parts without a layer: {parts - set(LEVEL)}; layers without a part: " \
                                f"{set(LEVEL) - parts}"


def test_imports_only_go_down():
    upward = []
    for module, targets in _graph().items():
        src = _part(module)
        for target in targets:
            dst = _part(target)
            if src is None or dst is None or src == dst:
                continue  # the root package (version) and a part's own modules
            if LEVEL[dst] > LEVEL[src] or (LEVEL[dst] == LEVEL[src] and LEVEL[src] > 0):  # core modules share a layer
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circles_between_modules():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The graph reader itself: a lazy relative import inside a function is an edge."""
    pkg = tmp_path / "deploykit" / "a"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from ..b.y import g\n    return g\n")
    modules = {"deploykit.a": pkg / "__init__.py", "deploykit.a.x": pkg / "x.py", "deploykit.b": Path("b"),
               "deploykit.b.y": Path("y")}
    assert _imports("deploykit.a.x", pkg / "x.py", modules) == {"deploykit.b.y"}

