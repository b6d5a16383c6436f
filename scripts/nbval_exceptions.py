"""List, in one place, every rule that weakens nbval's comparison: the sanitize rules
(tests/nbval_sanitize.cfg) and each notebook cell marked to be ignored, with its reason."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from toc_notebooks import toc_notebooks  # noqa: E402


def main() -> int:
    print("Sanitize rules (tests/nbval_sanitize.cfg):")
    for line in (ROOT / "tests" / "nbval_sanitize.cfg").read_text().splitlines():
        print("  " + line)
    print("\nCells whose output nbval does not compare:")
    for path in toc_notebooks():
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            lines = cell.source.splitlines()
            for j, line in enumerate(lines):
                if line.strip().lstrip("#").strip() in ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP"):
                    why = lines[j + 1].strip() if j + 1 < len(lines) else "(no reason given)"
                    print(f"  {path.relative_to(ROOT)} code cell {i}: {why.lstrip('# ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
