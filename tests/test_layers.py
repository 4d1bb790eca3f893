"""The layering rule, read from the source: train -> export -> edge, edge without torch, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"edge": "gloss.edge", "export": "gloss.export", "train": "gloss.train"}
# What each stage may import from gloss (itself included).
ALLOWED = {"gloss.edge": {"gloss.edge"}, "gloss.export": {"gloss.edge", "gloss.export"},
           "gloss.train": {"gloss.edge", "gloss.export", "gloss.train"}}  # fmt: skip
TORCH_STACK = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "optimum", "sentence_transformers"}


def module_name(path: Path) -> str:
    stage = path.relative_to(ROOT).parts[0]
    rel = path.relative_to(ROOT / stage).with_suffix("")
    parts = [STAGES[stage], *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for stage in STAGES for p in sorted((ROOT / stage).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    """Absolute names a module imports; with ``top_level_only``, only those run at import time."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.If) and _is_type_checking(child):
                inner = True
            if not (top_level_only and nested):
                if isinstance(child, ast.Import):
                    found.update(alias.name for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                        base = f"{anchor}.{base}" if base else anchor
                    found.add(base)
                    found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def test_the_source_tree_is_found() -> None:
    modules = source_modules()
    assert {"gloss.edge.recommend", "gloss.export.bundle", "gloss.train.loop", "gloss.edge.server.app",
            "gloss.edge.generation.generate", "gloss.edge.outdir"} <= set(modules)


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_stages_import_only_downwards(stage: str) -> None:
    bad = []
    for module, path in source_modules().items():
        if not module.startswith(stage + "."):
            continue
        for name in imports(path, module, top_level_only=False):
            target = ".".join(name.split(".")[:2])
            if name.startswith("gloss.") and target not in ALLOWED[stage]:
                bad.append(f"{module} imports {name}")
    assert not bad, "layers run train -> export -> edge:\n" + "\n".join(bad)


def test_edge_never_imports_the_torch_stack() -> None:
    bad = [f"{module} imports {name}" for module, path in source_modules().items() if module.startswith("gloss.edge")
           for name in imports(path, module, top_level_only=False) if name.split(".")[0] in TORCH_STACK]
    assert not bad, "gloss.edge runs without torch:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports at import time), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_at_import_time() -> None:
    modules = source_modules()
    graph = {module: {name for name in imports(path, module, top_level_only=True) if name in modules} - {module}
             for module, path in modules.items()}
    assert find_cycle(graph) is None
