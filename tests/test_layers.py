"""The package's layers: every import of a jaxgpt module goes down the order below, and nothing loops.

Each top-level module or subpackage of `jaxgpt/` is one unit with a rank; a module may import from its own
unit (without a cycle) or from a unit ranked below it. Imports inside functions count as much as those at
the top: hiding an upward import in a function does not make it go down.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jaxgpt"

# Bottom to top. A new module or subpackage must be placed here (the test refuses one that is not).
LAYERS = ("errors", "files", "config", "recipe", "report", "runtime", "tokenizer", "data", "model", "store", "eval", "train",
          "finetune", "serve", "plan", "cli")
ENTRY = {"jaxgpt", "jaxgpt.__main__"}  # the public API's lazy exports and `python -m jaxgpt` sit above every layer


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the jaxgpt modules it imports}, with `from pkg import name` resolved to the submodule when
    `name` is one."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxgpt") and not node.level:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("jaxgpt")}
        graph[name] = targets - {name}
    return graph


def unit(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def problems(graph: dict[str, set[str]]) -> list[str]:
    """Each import that goes up a layer, each module outside the layers, and each import cycle."""
    out = []
    for module, targets in sorted(graph.items()):
        if module in ENTRY:
            continue
        if unit(module) not in LAYERS:
            out.append(f"{module} is in no layer; add {unit(module)!r} to LAYERS")
            continue
        for target in sorted(targets):
            if target not in ENTRY and unit(target) in LAYERS and \
                    LAYERS.index(unit(target)) > LAYERS.index(unit(module)):
                out.append(f"{module} imports {target}, a layer up")
            if target in ENTRY:
                out.append(f"{module} imports {target}, the package's entry")
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                out.append("import cycle: " + " -> ".join(path[path.index(target):] + [module, target]))
            elif target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return out


def test_imports_go_down_the_layers_and_never_loop():
    graph = import_graph()
    assert len(graph) > 40 and "jaxgpt.tokenizer.bpe" in graph
    assert problems(graph) == []


def test_the_check_finds_a_loop_an_upward_import_and_a_module_outside_the_layers():
    graph = import_graph()
    loop = {**graph, "jaxgpt.tokenizer.bpe": graph["jaxgpt.tokenizer.bpe"] | {"jaxgpt.tokenizer.kinds"}}
    assert any(p.startswith("import cycle:") and "jaxgpt.tokenizer.kinds" in p for p in problems(loop))
    up = {**graph, "jaxgpt.config": graph["jaxgpt.config"] | {"jaxgpt.report.board"}}
    assert "jaxgpt.config imports jaxgpt.report.board, a layer up" in problems(up)
    stray = {**graph, "jaxgpt.extras": set()}
    assert problems(stray) == ["jaxgpt.extras is in no layer; add 'extras' to LAYERS"]


def test_imports_inside_functions_are_for_optional_extras_and_command_dispatch():
    """A jaxgpt import inside a function, outside cli/, hides an order the layers should show."""
    hidden = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if unit(name) == "cli" or name in ENTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("jaxgpt"):
                        hidden.append(f"{name}:{inner.lineno} from {inner.module}")
    assert hidden == []
