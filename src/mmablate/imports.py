"""Which project modules a `python -m mmablate <command>` imports: a static closure of its
imports (`import` statements anywhere in a module, function-level lazy imports included), so
a rule's `sources(...)` list can be checked to cover them (tests/test_rule_sources.py).

The closure starts at the command function's own imports and its module's top-level imports,
then follows every `mmablate` module imported from there. The command-line plumbing is left
out (`PLUMBING`: the entry points, argument parsing, error types, GPU claiming and device
choice, the process launcher, the fork server, and the small JSON/path helpers): editing it
does not change what a stage computes, and listing it would
rerun every job after each edit of the command line.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parent
PLUMBING = {"__init__.py", "__main__.py", "cli.py", "errors.py", "gpu.py", "device.py", "launch.py",
            "util.py", "forkserver.py"}


def module_file(name: str) -> Path | None:
    """The file of module `name` (`mmablate.x.y`): a package's __init__.py, a module's .py."""
    p = SRC.parent / Path(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def imported(tree, modname: str, is_pkg: bool, top_only: bool = False) -> set[str]:
    """The mmablate modules an AST imports (relative imports resolved against `modname`)."""
    out = set()
    pkg = modname if is_pkg else modname.rpartition(".")[0]
    nodes = tree.body if top_only else ast.walk(tree)
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.split(".")[0] == "mmablate"}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")
                base = base[:len(base) - (n.level - 1)]
                mod = ".".join(base + ([n.module] if n.module else []))
            else:
                mod = n.module or ""
            if mod.split(".")[0] != "mmablate":
                continue
            out.add(mod)
            for a in n.names:  # `from . import x`, `from .pkg import submodule`
                if module_file(f"{mod}.{a.name}"):
                    out.add(f"{mod}.{a.name}")
    return out


def closure(modules) -> set[str]:
    """`modules` and every mmablate module they import, transitively (parents included)."""
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages run too
        f = module_file(m)
        if f is not None:
            todo += imported(ast.parse(f.read_text()), m, f.name == "__init__.py")
    return seen


def command_function(command: str):
    """The function `python -m mmablate <command>` runs."""
    from .cli import subcommands

    return subcommands()[command].get_default("fn")


def command_sources(command: str) -> list[str]:
    """The project files (relative to src/mmablate) the command imports, plumbing left out."""
    fn = command_function(command)
    mod = fn.__module__
    start = imported(ast.parse(textwrap.dedent(inspect.getsource(fn))), mod, False)
    f = module_file(mod)
    start |= imported(ast.parse(f.read_text()), mod, f.name == "__init__.py", top_only=True)
    files = {module_file(m) for m in closure(start)} - {None}
    return sorted(str(p.relative_to(SRC)) for p in files if p.name not in PLUMBING)
