"""The package's own source, read as data: each module's imports of other modules of the package (static, through
`ast`: module-level and function-level imports, relative ones resolved) and the digests of the files a module needs.

- `import_graph()`: module -> the package's modules it imports (a test checks that the graph has no cycle);
- `source_digests(leave_out)`: `{"trl_shaped/<path>.py": sha256[:16]}` of every module of the package but those
  named: what a cell's code is, for its fingerprint. The whole package, not only what a cell imports by name: the
  package imports much of itself through names in strings (its public names, the judges and tasks registries), which
  no static reading follows; the study leaves out only the modules that report or launch (`cells.REPORT_MODULES`).

`import a.b` and `from a import b` count as importing the module `a.b` when it exists, else `a`. Importing a module
also runs its packages' `__init__.py`; those are followed only when they are imported by name (else every module
would import every other through the package's `__init__`).
"""

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "trl_shaped"
ROOT = Path(__file__).resolve().parents[1]  # the package's folder


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """module name -> file of every module of the package (`pkg/__init__.py` is the module `pkg`)."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


@lru_cache(maxsize=4096)
def _parsed_imports(path: Path, mtime_ns: int, size: int) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """(level, module, names) of every import statement of `path` (cached per file version)."""
    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
    return tuple(found)


def module_imports(name: str, files: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports."""
    path = files[name]
    stat = path.stat()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for level, module, names in _parsed_imports(path, stat.st_mtime_ns, stat.st_size):
        if level:
            base = package.split(".")
            base = base[: len(base) - (level - 1)]
            module = ".".join(base + ([module] if module else []))
        if module != PACKAGE and not module.startswith(PACKAGE + "."):
            continue
        targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in files]
        if len(targets) < len(names) or not names:  # names that are not modules come from `module` itself
            targets.append(module)
        while targets[-1] not in files and "." in targets[-1]:  # `import a.b.c` of a name inside a module
            targets[-1] = targets[-1].rpartition(".")[0]
        imported.update(t for t in targets if t in files and t != name)
    return imported


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports, for every module of the package."""
    files = module_files(root)
    return {name: module_imports(name, files) for name in files}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def source_digests(leave_out: tuple[str, ...] = (), root: Path = ROOT) -> dict[str, str]:
    """`{"trl_shaped/<path>.py": sha256[:16]}` of every module of the package but `leave_out` (module names)."""
    return {
        path.relative_to(root.parent).as_posix(): _digest(path)
        for name, path in module_files(root).items()
        if name not in leave_out
    }
