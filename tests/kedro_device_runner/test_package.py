"""The runner is generic Kedro infrastructure: it imports nothing of the project that
uses it, and Kedro's private API only in kedro_private.py."""

from __future__ import annotations

import ast
from pathlib import Path

import kedro_device_runner

PACKAGE = Path(kedro_device_runner.__file__).parent


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_no_project_import_and_kedro_private_names_in_one_module():
    for path in sorted(PACKAGE.glob("*.py")):
        names = imports(path)
        assert not [n for n in names if n.split(".")[0] == "sae_reasoning"], path.name
        private = [n for n in names if n.startswith("kedro.") and "._" in n]
        if path.name != "kedro_private.py":
            assert not private, (path.name, private)
