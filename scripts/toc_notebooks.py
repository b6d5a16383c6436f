"""Print the notebooks listed in _toc.yml, in book order, one path per line.

The test command passes exactly these to nbval, so a notebook is tested if and only if it is in
the book. With ``--check`` it also fails when a listed notebook has no stored outputs or stores
an error (tests/test_book.py runs the same check).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def toc_files(root: Path = ROOT) -> list[Path]:
    """Every file (any suffix) named in _toc.yml, resolved against the repository root."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    names.append(node[key])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    paths = []
    for name in names:
        candidates = [root / name] if Path(name).suffix else [root / f"{name}{s}" for s in (".ipynb", ".md")]
        found = [p for p in candidates if p.exists()]
        if not found:
            raise FileNotFoundError(f"_toc.yml lists {name!r}, but no such file exists under {root}")
        paths.append(found[0])
    return paths


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


if __name__ == "__main__":
    for path in toc_notebooks():
        print(path.relative_to(ROOT))
