"""Re-execute the book's notebooks in the test environment and save them with their outputs.

nbval compares a fresh run against the outputs stored in each notebook, so the stored outputs
must come from the same environment as the tests: this script imports tests/conftest.py, which
sets that environment (reproducible arithmetic, network guard), before starting any kernel.
Each notebook is written atomically (temporary file, then rename). Prints the time per notebook.

The stored outputs are only as reproducible as the arithmetic that made them, so this script
also keeps book/arithmetic.json, the fingerprint of that arithmetic: re-executing every
notebook stores this machine's; re-executing only some is refused on a machine whose
fingerprint differs (the book would mix two arithmetics).

Usage: python scripts/execute_notebooks.py [book/some.ipynb ...]   (default: all in _toc.yml)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

import conftest  # noqa: E402,F401  (sets the test environment for the kernels)
import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from toc_notebooks import toc_notebooks  # noqa: E402

from finetune_helpers import fingerprint  # noqa: E402


def execute(path: Path, timeout: int = 1200) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.chmod(tmp, path.stat().st_mode & 0o777 | 0o644)  # mkstemp makes it private (0600)
    os.replace(tmp, path)
    return seconds


def check_arithmetic(every_notebook: bool) -> None:
    """Store this machine's fingerprint, or refuse to mix it with another's outputs."""
    parts = fingerprint.compute()
    stored = fingerprint.load()
    if stored is not None and not fingerprint.differing_parts(parts, stored):
        print(fingerprint.explain(parts, stored), flush=True)
        return
    if not every_notebook:
        raise SystemExit(
            fingerprint.explain(parts, stored) + ".\nRe-executing only some notebooks here "
            "would mix two arithmetics in the book: run `make notebooks` (all of them), or "
            "re-execute these on a machine whose fingerprint matches.")
    fingerprint.save(fingerprint.record(parts, "reproducible"))
    print(f"stored this machine's arithmetic fingerprint {fingerprint.combine(parts)} in "
          f"{fingerprint.book_file()}", flush=True)


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or toc_notebooks()
    check_arithmetic(every_notebook=set(toc_notebooks()) <= set(paths))
    for path in paths:
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        print(f"  {execute(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
