"""Imports point down: the library never loads the application layer, and no two modules import each other.

The application layer is ``jaxconv.cli`` (and ``jaxconv.__main__``), the experiment registry
``jaxconv.experiments`` and the benchmark suite ``jaxconv.bench``; everything else is the library.
"""

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "jaxconv"
APPLICATION = ("jaxconv.cli", "jaxconv.__main__", "jaxconv.experiments", "jaxconv.bench")
# The modules outside jaxconv.experiments that may import it: the CLI, and the training benchmark (it
# times the experiments' own configs).
IMPORT_EXPERIMENTS = {"jaxconv.cli", "jaxconv.bench.train"}


def _fresh(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _is_application(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in APPLICATION)


def test_importing_the_library_loads_no_application_module_and_leaves_logging_alone():
    """Every library module imported in a fresh process: no application module in ``sys.modules``, and
    the absl logger (orbax's) as it was before (the CLI's entry point quiets it, not an import)."""
    lines = _fresh(f"""
import importlib, logging, pkgutil, sys
import absl.logging
before = logging.getLogger("absl").level
import jaxconv.models, jaxconv.train
APPLICATION = {APPLICATION!r}
library, packages = [], [jaxconv]
while packages:  # pkgutil.walk_packages would import the application's packages to list them
    package = packages.pop()
    for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if not any(m.name == a or m.name.startswith(a + ".") for a in APPLICATION):
            library.append(importlib.import_module(m.name))
            packages += [library[-1]] if m.ispkg else []
print(len(library))
print(sorted(m for m in sys.modules if m == "experiments" or m.startswith("experiments.")
             or any(m == a or m.startswith(a + ".") for a in APPLICATION)))
print(logging.getLogger("absl").level == before)
""")
    assert int(lines[0]) > 20  # the walk found the library
    assert lines[1:] == ["[]", "True"]


def test_experiments_are_data_that_import_no_cli():
    lines = _fresh("""
import importlib, sys
from jaxconv import experiments
for name in experiments.names():
    importlib.import_module(f"jaxconv.experiments.{name}")
    experiments.load_study(name) if experiments.is_study(name) else experiments.load(name)
print(len(experiments.names()), "jaxconv.cli" in sys.modules)
""")
    assert lines[-1].split()[1] == "False" and int(lines[-1].split()[0]) >= 10


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules: set[str]) -> set[str]:
    """The jaxconv modules ``path`` imports anywhere (functions included), except in its
    ``if __name__ == "__main__":`` block, which runs only when the file is the program."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Compare)
                    and isinstance(child.test.left, ast.Name) and child.test.left.id == "__name__"):
                continue
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # annotations only: never imported at run time
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - child.level + 1],
                                     *([child.module] if child.module else [])])
                for a in child.names:  # `from pkg import submodule` imports the submodule
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    resolved = set()
    for module in found:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        if module and module != name:
            resolved.add(module)
    return resolved


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def test_only_the_cli_and_the_training_bench_import_the_experiments():
    graph = _graph()
    inside = lambda m: m == "jaxconv.experiments" or m.startswith("jaxconv.experiments.")  # noqa: E731
    importers = {m for m, deps in graph.items() if not inside(m) and any(inside(d) for d in deps)}
    assert importers <= IMPORT_EXPERIMENTS
    assert {m for m, deps in graph.items() if "jaxconv.cli" in deps} == {"jaxconv.__main__"}
    library = {m for m in graph if not _is_application(m)}
    assert {m: sorted(d for d in graph[m] if _is_application(d)) for m in library
            if any(_is_application(d) for d in graph[m])} == {}


def test_no_import_cycles_and_no_private_jax():
    graph = _graph()
    # A cycle is a module that reaches itself; depth-first from every module.
    cycles = set()
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            module, path = stack.pop()
            for dep in graph[module]:
                if dep == start:
                    cycles.add(tuple(sorted(path)))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, (*path, dep)))
    assert not cycles, cycles
    private = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if "jax._src" in p.read_text()]
    assert private == []
