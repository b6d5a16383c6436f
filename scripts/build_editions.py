"""Build the Chinese edition of the book, and keep its message catalogues in step with the pages.

    python scripts/build_editions.py zh
        The Chinese edition into _build/html/zh (`make book` runs it after the English build).
    python scripts/build_editions.py pot
        The message templates of every page into _build/gettext/<page>.pot (Sphinx's gettext
        builder: the prose of markdown cells and .md pages, headings, table cells, captions;
        not code cells, not outputs).
    python scripts/build_editions.py update [PAGE ...]
        `pot`, then `sphinx-intl update` for the pages that already have a catalogue in
        locale/zh_CN/LC_MESSAGES/, for each PAGE named (a docname: book/03_finetune_all) and
        for _toc.po (the sidebar's part captions, see scripts/edition_switch.py).
        New or changed English messages arrive empty or fuzzy; translate them in the .po.

Every build goes through Jupyter Book's own configuration pipeline (_config.yml and _toc.yml,
`jupyter_book.sphinx.build_sphinx`, the call `jupyter-book build` makes), so both editions have
the same extensions, static files and widgets; the Chinese one only overrides what is listed in
ZH_OVERRIDES. Like `jupyter-book build --all -W -n --keep-going` (JB_FLAGS in the Makefile) each
build starts from a fresh environment, is nitpicky and turns warnings into errors; the Chinese
build keeps its own doctrees (_build/.doctrees-zh), so it never invalidates the English ones.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from edition_switch import TOC_DOMAIN, toc_captions  # noqa: E402
BUILD = ROOT / "_build"
LANGUAGE = "zh_CN"
ZH_OUT = BUILD / "html" / "zh"  # scripts/edition_switch.py links the editions by this folder
POT_OUT = BUILD / "gettext"
LOCALE = ROOT / "locale"

ZH_OVERRIDES = {
    "language": LANGUAGE,
    "html_title": "用 PaddlePaddle 微调预训练模型",
    "html_theme_options": {"search_bar_text": "搜索本书……"},
}


def sphinx(builder: str, outdir: Path, doctrees: Path, overrides: dict) -> int:
    """One Sphinx build of the whole book, configured exactly as `jupyter-book build` does."""
    from jupyter_book.sphinx import build_sphinx

    confoverrides = {
        "external_toc_path": (ROOT / "_toc.yml").as_posix(),
        "latex_individualpages": False,
        "nitpicky": True,  # -n
        **overrides,
    }
    start = time.perf_counter()
    result = build_sphinx(
        ROOT, outdir, noconfig=True, path_config=ROOT / "_config.yml",
        confoverrides=confoverrides, builder=builder, doctreedir=doctrees,
        freshenv=True,  # --all
        warningiserror=True,  # -W
        keep_going=True,  # --keep-going
    )
    status = 0 if result == 0 else 1
    print(f"{builder} build into {outdir.relative_to(ROOT)}: "
          f"{'ok' if status == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    return status


def build_zh() -> int:
    if not (BUILD / "html" / "index.html").exists():
        print("build the English edition first (make book)", file=sys.stderr)
        return 1
    status = sphinx("html", ZH_OUT, BUILD / ".doctrees-zh", ZH_OVERRIDES)
    if status == 0:
        print(f"Chinese edition built: open {ZH_OUT.relative_to(ROOT)}/index.html")
    return status


def build_pot() -> int:
    shutil.rmtree(POT_OUT, ignore_errors=True)
    status = sphinx("gettext", POT_OUT, BUILD / ".doctrees-gettext", {})
    if status == 0:
        write_toc_pot(POT_OUT / f"{TOC_DOMAIN}.pot")
    return status


def write_toc_pot(path: Path) -> None:
    """The template of the sidebar's part captions (see scripts/edition_switch.py)."""
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import write_po

    catalog = Catalog(project="Fine-tuning Pretrained Models with PaddlePaddle", fuzzy=False)
    for caption in toc_captions():
        catalog.add(caption, locations=[("_toc.yml", 0)])
    with path.open("wb") as f:
        write_po(f, catalog, width=76, omit_header=False, no_location=True)


def update(pages: list[str]) -> int:
    status = build_pot()
    if status:
        return status
    po_dir = LOCALE / LANGUAGE / "LC_MESSAGES"
    existing = [p.relative_to(po_dir).with_suffix("").as_posix() for p in po_dir.rglob("*.po")]
    wanted = sorted(set(existing) | set(pages) | {TOC_DOMAIN})
    missing = [page for page in wanted if not (POT_OUT / f"{page}.pot").exists()]
    if missing:
        print(f"no message template for {missing}: is the page in _toc.yml?", file=sys.stderr)
        return 1
    # sphinx-intl updates every template of a folder: give it only the wanted pages'.
    with tempfile.TemporaryDirectory() as tmp:
        for page in wanted:
            target = Path(tmp) / f"{page}.pot"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(POT_OUT / f"{page}.pot", target)
        return subprocess.call([str(Path(sys.executable).parent / "sphinx-intl"), "update",
                                "-p", tmp, "-d", str(LOCALE), "-l", LANGUAGE])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["zh", "pot", "update"])
    parser.add_argument("pages", nargs="*", help="update: docnames to start a catalogue for")
    args = parser.parse_args(argv)
    if args.command == "zh":
        return build_zh()
    if args.command == "pot":
        return build_pot()
    return update(args.pages)


if __name__ == "__main__":
    sys.exit(main())
