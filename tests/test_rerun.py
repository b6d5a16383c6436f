"""Running a notebook twice in the same kernel gives the same results.

A reader often re-runs a notebook top to bottom without restarting the kernel; seeds are set
by `runtime.setup()` in the first cell, so the second pass must print what the first printed.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # two notebooks, each run twice: about two minutes
# The set-up page, and the cheapest chapter that trains models (about a minute per pass): it
# also loads all three offline models, uses the network guard and catches expected errors.
RERUN = ["book/environment.ipynb", "book/10_original_snippets.ipynb"]


def _texts(cell) -> str:
    """All text a cell printed or returned (stream chunking differs between runs)."""
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append(o.text)
        elif "data" in o and "text/plain" in o.data:
            out.append(o.data["text/plain"])
    return "".join(out)


@pytest.mark.parametrize("name", RERUN)
def test_second_run_in_same_kernel_prints_the_same(name):
    nb = nbformat.read(ROOT / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str((ROOT / name).parent)}})
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    with client.setup_kernel():
        first = []
        for i in code:
            client.execute_cell(nb.cells[i], i)
            first.append(_texts(nb.cells[i]))
        second = []
        for i in code:
            client.execute_cell(nb.cells[i], i)
            second.append(_texts(nb.cells[i]))
    # The runtime line differs by design on the second pass: paddle is already imported.
    assert "paddle was imported before setup()" in second[0]
    # Cells exempt from nbval's comparison (timings and memory: scripts/nbval_exceptions.py)
    # are exempt here too; every other output must repeat exactly.
    compared = [k for k, i in enumerate(code) if "NBVAL_IGNORE_OUTPUT" not in nb.cells[i].source]
    differ = [code[k] for k in compared[1:] if first[k] != second[k]]
    assert not differ, f"{name}: code cells {differ} printed something else on the second run"
