"""Which project modules a `python -m mmablate <command>` imports: a static closure of its
imports (`import` statements anywhere in a module, function-level lazy imports included). Each
rule takes its `src` input from here (`stage_sources`, workflow/rules/common.smk), so editing
any module a stage's command imports reruns the stage; the rule's GPU mark comes from the
command's declaration (`claims_gpu`: `set_defaults(gpu=True)` in its cli).

The closure starts at the command function's own imports, the imports of the functions of its
module it calls (by name, transitively) and its module's top-level imports, then follows every
`mmablate` module imported from there. The command-line plumbing is left out (`PLUMBING`: the
entry points, argument parsing, error types, GPU claiming and device choice, the process
launcher, the fork server, and the small JSON/path helpers): editing it does not change what a
stage computes, and listing it would rerun every job after each edit of the command line.
"""
from __future__ import annotations

import ast
import functools
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
        todo += _module_imports(m)
    return seen


@functools.lru_cache(maxsize=None)
def _module_imports(m: str) -> tuple:
    """The mmablate modules module `m` imports anywhere (parsed once per process: the rules ask
    for the closure of every stage's command at parse time)."""
    f = module_file(m)
    if f is None:
        return ()
    return tuple(sorted(imported(_tree(f), m, f.name == "__init__.py")))


@functools.lru_cache(maxsize=None)
def _tree(path: Path):
    return ast.parse(path.read_text())


@functools.lru_cache(maxsize=None)
def _commands() -> dict:
    """command → its argparse subparser (the parser is built once: the rules ask per stage)."""
    from .cli import parser

    sub = next(a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


def _subparser(command: str):
    try:
        return _commands()[command]
    except KeyError:
        raise ValueError(f"no `python -m mmablate {command}` command; known: "
                         f"{sorted(_commands())}") from None


def command_function(command: str):
    """The function `python -m mmablate <command>` runs."""
    return _subparser(command).get_default("fn")


def claims_gpu(command: str) -> bool:
    """Whether the command is a GPU stage (`set_defaults(gpu=True)`: `cli.main` claims a GPU
    for it before it runs, mmablate.gpu); its rule then declares `resources: gpu=GPU`."""
    return bool(_subparser(command).get_default("gpu"))


def command_sources(command: str) -> list[str]:
    """The project files (relative to src/mmablate) the command imports, plumbing left out."""
    fn = command_function(command)
    mod = fn.__module__
    start = imported(ast.parse(textwrap.dedent(inspect.getsource(fn))), mod, False)
    f = module_file(mod)
    start |= imported(ast.parse(f.read_text()), mod, f.name == "__init__.py", top_only=True)
    files = {module_file(m) for m in closure(start)} - {None}
    return sorted(str(p.relative_to(SRC)) for p in files if p.name not in PLUMBING)


def _helpers(fn) -> list:
    """The top-level functions of `fn`'s module that `fn` calls or names, transitively (a
    study's `cmd_eval` builds its judge in `_judge`, whose lazy imports are the stage's too)."""
    tree = _tree(module_file(fn.__module__))
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    seen, todo = [], [defs[fn.__name__]] if fn.__name__ in defs else []
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.append(node)
        todo += [defs[n.id] for n in ast.walk(node)
                 if isinstance(n, ast.Name) and n.id in defs and defs[n.id] not in seen]
    return seen


def stage_sources(command: str) -> list[str]:
    """The source files (relative to the repo, sorted) a rule running `python -m mmablate
    <command>` takes as its `src` input: every project module the command imports — from the
    command function, the functions of its module it calls, and that module's top-level
    imports — with the packages' `__init__.py` they run, and the command's own module unless it
    is the top-level plumbing (a study's cli.py holds code its stages run, e.g. mmalign-merge's
    merging). Plumbing (`PLUMBING`, top-level files of the package) is left out."""
    fn = command_function(command)
    mod = fn.__module__
    f = module_file(mod)
    start = set()
    for node in _helpers(fn):
        start |= imported(node, mod, False)
    start |= imported(_tree(f), mod, f.name == "__init__.py", top_only=True)
    files = {module_file(m) for m in closure(start)} | {f}
    files.discard(None)
    rel = {p.relative_to(SRC) for p in files}
    keep = sorted(str(p) for p in rel if not (len(p.parts) == 1 and p.name in PLUMBING))
    return [str((SRC / p).relative_to(SRC.parent.parent)) for p in keep]
