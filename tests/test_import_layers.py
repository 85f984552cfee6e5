"""The command line (`mmablate.cli`) is the top layer: the modules it dispatches to do not import
it back (lazy, function-level imports included), so `jobs` and `launch` sit below it."""
import ast

from mmablate.imports import SRC, imported

# entry points that run a command (`python -m mmablate`, a fork-server worker) and the module
# that reads the command table to compute the rules' sources (the cli never imports it)
MAY_IMPORT_CLI = {"mmablate.__main__", "mmablate.forkserver", "mmablate.imports"}


def modules():
    for f in sorted(SRC.rglob("*.py")):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        is_pkg = f.name == "__init__.py"
        yield ".".join(parts[:-1] if is_pkg else parts), f, is_pkg


def test_only_entry_points_import_the_cli():
    importers = {name for name, f, is_pkg in modules()
                 if "mmablate.cli" in imported(ast.parse(f.read_text()), name, is_pkg)}
    assert importers - MAY_IMPORT_CLI == set()
    assert "mmablate.__main__" in importers  # the scan sees imports (guards against a no-op)


def test_the_cli_still_reaches_jobs_and_launch():
    cli = next(f for name, f, _ in modules() if name == "mmablate.cli")
    used = imported(ast.parse(cli.read_text()), "mmablate.cli", False)
    assert {"mmablate.jobs", "mmablate.launch"} <= used
