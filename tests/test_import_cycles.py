"""The bottom of the import graph stays a bottom: errors.py builds only on diskspace.py, which builds on
nothing of ragqa_exp (they once imported each other through fsutil.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import ragqa_exp

PACKAGE = Path(ragqa_exp.__file__).parent


def ragqa_imports(module: str) -> set[str]:
    """The ragqa_exp modules `module` imports anywhere in its file (function bodies included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ragqa_exp"):
            found |= {node.module} if node.module != "ragqa_exp" else {f"ragqa_exp.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ragqa_exp")}
    return found


def test_errors_and_diskspace_import_nothing_above_them():
    assert ragqa_imports("diskspace") == set()
    assert ragqa_imports("errors") == {"ragqa_exp.diskspace"}
    assert "ragqa_exp.errors" in ragqa_imports("fsutil")  # fsutil builds on errors, not the other way round
