"""The internal import graph of ``lattice_flows``, read from the source, checked against its layers.

Every module of the package has a layer (:data:`LAYERS`, lowest first; ``docs/architecture.md`` says
what each is for). A module may import modules of its own layer and of the layers below, never one
above. The script parses every ``lattice_flows/**/*.py`` (nothing is imported), prints the layers
with each module's size in lines and what of the package it imports, and exits with status 1 when

* a module imports one of a higher layer (an upward import),
* the imports form a cycle,
* a module imports one of the package inside a function (the way a cycle used to be dodged),
* a module has no layer in :data:`LAYERS` (a new module must be given one),
* a plugin (a file under ``plugins/``) imports a core module beyond :data:`PLUGIN_LAYERS` (the run parts,
  the facade's module, the reports, the CLI): plugins use the public core only.

Imports of optional third-party packages (matplotlib, tqdm, yaml) belong inside the functions that
need them, so that a plain install runs without them; they are listed at the end, not flagged.

    python benchmarks/import_graph.py            # the graph; exit status 1 on a violation
    python benchmarks/import_graph.py --root path/to/lattice_flows --plugins path/to/plugins
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "lattice_flows"

#: The layers, lowest first: (name, what the layer is, its modules). A subpackage (``testing``) counts as
#: one module of its layer, with all its files.
LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("foundation", "errors, typed parameters, devices and ranks, files, small helpers: no component", (
        "errors", "params", "phase_space", "forces", "angles", "distributed", "progress", "checkpoint", "specfile", "nn",
        "resources", "kinds", "run_table",
    )),
    ("spec", "building components from spec sections, and sections from components", ("spec",)),
    ("components", "the abstract base classes every plugin subclasses", ("base",)),
    ("plugins", "the entry-point registries", ("registry",)),
    ("services", "what a run uses: settings, training, analysis, run folders", (
        "run_settings", "training", "analysis", "tables", "rundir",
    )),
    ("run parts", "the parts of a run, each one job", (
        "run_builder", "chain_driver", "chains_checkpoint", "flow_trainer", "run_summary",
    )),
    ("facade", "Simulation: one method per thing a user does", ("simulation",)),
    ("reports", "what is shown of a run, and the kit for plugin authors", (
        "flow_report", "figures", "reference", "testing", "compare",
    )),
    ("entry points", "the command line and the package's public names", ("cli", "__main__", "__init__")),
]

#: The core modules a plugin (``plugins/``) may import: the layers up to the services, the package's public names
#: (``__init__``) and the kit for plugin authors; never a run part, the facade's insides, a report or the CLI.
PLUGIN_LAYERS = ("foundation", "spec", "components", "plugins", "services")
PLUGIN_EXTRA = ("__init__", "testing")

#: Third-party packages that are optional (extras): imported inside functions, never at module level.
OPTIONAL = ("matplotlib", "tqdm", "yaml")


def layer_of() -> dict[str, int]:
    return {module: i for i, (_, _, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path, root: Path) -> str:
    """``base`` for ``lattice_flows/base.py``, ``testing`` for ``testing/__init__.py``, ``testing.x`` for its ``x.py``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _inside_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def imports_of(path: Path, root: Path, modules: set[str]) -> tuple[list[tuple[str, int, bool]], list[tuple[str, int, bool]]]:
    """``([(own module, line, inside a function)], [(optional third-party package, line, inside a function)])``
    of one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    # the package a relative import of this file is relative to, as a list of parts below lattice_flows
    here = name.split(".") if is_package and name != "__init__" else name.split(".")[:-1]
    own: list[tuple[str, int, bool]] = []
    optional: list[tuple[str, int, bool]] = []

    def add(target: str, node: ast.AST) -> None:
        # the longest known module that target is or lies in; the package itself is "__init__"
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        own.append((".".join(parts) if parts else "__init__", node.lineno, _inside_function(node, parents)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == PACKAGE:
                    add(alias.name.removeprefix(PACKAGE).lstrip("."), node)
                elif top in OPTIONAL:
                    optional.append((top, node.lineno, _inside_function(node, parents)))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")[0]
                if top == PACKAGE:
                    base = (node.module or "").removeprefix(PACKAGE).lstrip(".")
                elif top in OPTIONAL:
                    optional.append((top, node.lineno, _inside_function(node, parents)))
                    continue
                else:
                    continue
            else:
                package = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                add(full if full in modules else base, node)
    return own, optional


def _absolute_core_imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """``[(core module, line, inside a function)]`` that a file outside the package imports (``lattice_flows.x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            base = (node.module or "").removeprefix(PACKAGE).lstrip(".")
            targets = [f"{PACKAGE}.{base}.{a.name}".replace("..", ".") if base else f"{PACKAGE}.{a.name}" for a in node.names]
        for target in targets:
            parts = target.removeprefix(PACKAGE).lstrip(".").split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            found.append((".".join(parts) if parts else "__init__", node.lineno, False))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / PACKAGE,
                        help="the package folder (default: the lattice_flows of this checkout)")
    parser.add_argument("--plugins", type=Path, default=Path(__file__).resolve().parent.parent / "plugins",
                        help="the plugins folder whose imports of the core are checked (default: this checkout's)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    names = {module_name(p, root): p for p in files}
    layers = layer_of()
    top = {name: name.split(".")[0] for name in names}  # testing.x is in the layer of testing
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    optional: dict[str, set[str]] = {}
    lines: dict[str, int] = {}
    for name, path in names.items():
        own, opt = imports_of(path, root, set(names))
        lines[name] = len(path.read_text().splitlines())
        graph[name] = {target for target, _, _ in own if target != name}
        for package, lineno, in_function in opt:
            optional.setdefault(name, set()).add(package)
            if not in_function:
                problems.append(f"{path.relative_to(root.parent)}:{lineno}: {name} imports the optional {package} at "
                                "module level; import it inside the function that needs it")
        if top[name] not in layers:
            problems.append(f"{name}: has no layer; add it to LAYERS in {Path(__file__).name} and to docs/architecture.md")
            continue
        for target, lineno, in_function in own:
            where = f"{path.relative_to(root.parent)}:{lineno}"
            if in_function:
                problems.append(f"{where}: {name} imports {target} inside a function; import it at the top of the module")
            if target != name and top.get(target, target) in layers and layers[top.get(target, target)] > layers[top[name]]:
                problems.append(
                    f"{where}: {name} (layer {layers[top[name]]}, {LAYERS[layers[top[name]]][0]}) imports {target} "
                    f"(layer {layers[top[target]]}, {LAYERS[layers[top[target]]][0]}): an upward import"
                )
    for cycle in _cycles(graph):
        problems.append("import cycle: " + " -> ".join(cycle + [cycle[0]]))
    allowed = {m for layer, _, modules in LAYERS if layer in PLUGIN_LAYERS for m in modules} | set(PLUGIN_EXTRA)
    plugin_files = sorted(p for p in args.plugins.rglob("*.py") if "__pycache__" not in p.parts) if args.plugins.is_dir() else []
    used_by_plugins: set[str] = set()
    for path in plugin_files:
        for target, lineno, _ in _absolute_core_imports(path, set(names)):
            used_by_plugins.add(target)
            if top.get(target, target) not in allowed:
                problems.append(f"{path}:{lineno}: a plugin imports the core module {target}, which is not public "
                                f"to plugins (they may import: {', '.join(sorted(allowed))})")

    width = max(len(n) for n in names)
    print(f"{PACKAGE}: {len(names)} modules, {sum(lines.values())} lines, {len(LAYERS)} layers "
          "(a module may import from its own layer and the layers listed before it)")
    for i, (layer, what, modules) in enumerate(LAYERS):
        print(f"\nlayer {i}: {layer} ({what})")
        members = sorted((n for n in names if top[n] in modules), key=lambda n: (modules.index(top[n]), n))
        for name in members:
            imported = ", ".join(sorted(graph[name])) or "-"
            print(f"  {name:<{width}} {lines[name]:>5}  imports {imported}")
    if optional:
        print("\noptional packages, imported inside functions (a plain install runs without them):")
        for name in sorted(optional):
            print(f"  {name:<{width}} {', '.join(sorted(optional[name]))}")
    if plugin_files:
        print(f"\nplugins ({len(plugin_files)} files under {args.plugins.name}/) import from the core: "
              f"{', '.join(sorted(used_by_plugins)) or '-'}")
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("\nno cycle, no upward import, no function-level import of an own module")
    return 0


if __name__ == "__main__":
    sys.exit(main())
