"""The book's table of contents: every entry exists, and every notebook stores clean outputs."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from toc_notebooks import toc_files, toc_notebooks  # noqa: E402

NOTEBOOKS = toc_notebooks()


def test_toc_lists_existing_files():
    files = toc_files()
    assert files[0] == ROOT / "book" / "intro.md"
    assert len(set(files)) == len(files), "a file is listed twice in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_stored_outputs_and_no_errors(path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code_cells, f"{path.name} has no code"
    for i, cell in enumerate(code_cells):
        assert cell.execution_count is not None, (
            f"{path.name}: code cell {i} was never executed; run `make notebooks` and commit")
        for output in cell.outputs:
            assert output.output_type != "error", (
                f"{path.name}: code cell {i} stores an error: {output.get('ename')}")
    counts = [c.execution_count for c in code_cells]
    assert counts == sorted(counts), f"{path.name}: cells were not run top to bottom"
    assert "runtime.setup(" in code_cells[0].source, (
        f"{path.name}: the first code cell must call runtime.setup() before paddle is imported")


# nbval markers that weaken the comparison; each use must say why, on the next line.
_WEAKENING = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_ignored_cell_says_why(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        lines = [line.strip() for line in cell.source.splitlines()]
        for j, line in enumerate(lines):
            if line.lstrip("#").strip() in _WEAKENING:
                reason = lines[j + 1] if j + 1 < len(lines) else ""
                assert reason.startswith("# Why ignored:") and len(reason) > 20, (
                    f"{path.name}: code cell {i} uses {line} without a '# Why ignored: ...' "
                    "line after it")
