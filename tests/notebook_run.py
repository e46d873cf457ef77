"""Execute a project notebook headless with nbclient, as papermill would: a cell that sets the
parameters is injected after the one tagged `parameters`. The kernel is this venv's python
(its `python3` kernelspec under sys.prefix); nothing is registered in the user's Jupyter dirs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b]*\x1b\\")  # colours and links of rich's output


def execute(notebook: Path, cwd: Path, parameters: dict, env: dict, timeout: int = 600):
    """The executed notebook (nbformat node); raises nbclient's CellExecutionError on a failing
    cell."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(
        at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    )
    # The venv's kernelspecs first, ahead of any in the user's or the system's Jupyter dirs.
    venv_kernels = str(Path(sys.prefix) / "share" / "jupyter")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = venv_kernels
    try:
        client = NotebookClient(
            nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(cwd)}}
        )
        client.execute(env={**env, "JUPYTER_PATH": venv_kernels})
    finally:
        os.environ.pop("JUPYTER_PATH") if old is None else os.environ.__setitem__(
            "JUPYTER_PATH", old
        )
    return nb


def texts(cell) -> str:
    """Everything a cell printed or displayed as text/html, colour codes removed."""
    parts = []
    for o in cell.get("outputs", []):
        parts.append(o.get("text", ""))
        data = o.get("data", {})
        parts += [data.get("text/plain", ""), data.get("text/html", "")]
        parts += o.get("traceback", [])
    return ANSI.sub("", "\n".join(parts))


def cell_with(nb, needle: str):
    """The one code cell whose source contains `needle`."""
    found = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(found) == 1, f"{len(found)} cells contain {needle!r}"
    return found[0]
