"""The shape of the code base, checked from the source: the core (``regframe/``) never imports the
Lightning glue (``data_modules``, ``callbacks``), has no import cycle, and every declared
dependency is used."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "regframe"
GLUE = ("data_modules", "callbacks")
# Declared dependencies that our code reaches through another library, with the code that needs them.
INDIRECT = {"jsonargparse": ("regframe/cli.py", "LightningCLI"), "rich": ("regframe/cli.py", "RichProgressBar"),
            "wandb": ("regframe/run_config.py", "WandbLogger")}
IMPORT_NAME = {"lightning": "lightning", "monai": "monai", "torchio": "torchio", "wandb": "wandb",
               "omegaconf": "omegaconf", "nibabel": "nibabel", "numpy": "numpy", "scipy": "scipy", "torch": "torch",
               "simpleitk": "SimpleITK"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports and
    ``importlib.import_module("...")`` with a literal name included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CORE.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def test_core_never_imports_the_lightning_glue():
    offenders = sorted(f"{p.relative_to(ROOT)} imports {m}" for p in CORE.rglob("*.py") for m in imported_modules(p)
                       if m.split(".")[0] in GLUE)
    assert offenders == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of ``graph`` (module -> imported modules) found by depth-first search, each as
    the path that closes it; a package importing its own submodules does not count."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]


def test_cycle_finder_on_known_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"pkg": {"pkg.x"}, "pkg.x": {"pkg"}}) == []


def test_core_has_no_import_cycle():
    assert find_cycles(core_graph()) == []


def test_every_declared_dependency_is_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for d in project["dependencies"]]
    sources = [p for folder in ("regframe", *GLUE) for p in (ROOT / folder).rglob("*.py")]
    used = {m.split(".")[0] for p in sources for m in imported_modules(p)}
    unused = []
    for name in declared:
        if name in INDIRECT:
            path, feature = INDIRECT[name]
            if feature not in (ROOT / path).read_text():
                unused.append(f"{name} (declared for {feature} in {path}, which no longer uses it)")
        elif IMPORT_NAME.get(name, name) not in used:
            unused.append(name)
    assert unused == []
