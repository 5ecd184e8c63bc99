"""Which code a step runs, read from the source: the semrl modules a module imports (at the top or inside
functions), their closure (with the templates a module renders: <package>/templates/<module>*), and a
fingerprint of those files. DVC's code deps are these closures
(tests/test_layout.py checks dvc.yaml against them); a training branch's reuse key holds the fingerprint."""
from __future__ import annotations

import ast
import hashlib
import threading
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[2]  # the project: semrl/ lives here
# CPython's ast.parse is not safe in threads at once ("AST constructor recursion depth mismatch", seen when
# the flow's train-step threads computed their inputs together): one parse at a time.
_PARSE = threading.Lock()


def parse(path: Path) -> ast.Module:
    with _PARSE:
        return ast.parse(path.read_text(encoding="utf-8"))


def module_file(name: str, root: Path = ROOT) -> Path | None:
    base = root / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def semrl_imports(nodes: Iterable[ast.AST], root: Path = ROOT) -> set[str]:
    """Every semrl module a piece of code imports, at the top or inside functions."""
    found = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Import):
                found |= {a.name for a in n.names if a.name.split(".")[0] == "semrl"}
            elif isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "semrl":
                found.add(n.module)
                found |= {f"{n.module}.{a.name}" for a in n.names if module_file(f"{n.module}.{a.name}", root)}
    return found


def templates(path: Path) -> set[Path]:
    """The templates a module renders, by convention beside it: <its package>/templates/<its name>* (e.g.
    semrl/evaluation/templates/report.md.j2 for semrl/evaluation/report.py)."""
    return set((path.parent / "templates").glob(f"{path.stem}*")) if path.name != "__init__.py" else set()


def closure(modules: Iterable[str], root: Path = ROOT, files: set[Path] | None = None) -> set[Path]:
    """The files those modules run: each module, its templates, its packages' __init__ files, and what they
    import, on."""
    files, todo = set(files or ()), list(modules)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            path = module_file(".".join(parts[:i]), root)
            if path and path not in files:
                files.add(path)
                files |= templates(path)
                todo += semrl_imports([parse(path)], root)
    return files


def code_fingerprint(modules: Iterable[str], root: Path = ROOT) -> str:
    """sha256 of the closure's files (their paths and bytes): changes exactly when code they run changes."""
    h = hashlib.sha256()
    for path in sorted(closure(modules, root)):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
