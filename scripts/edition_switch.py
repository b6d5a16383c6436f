"""Sphinx extension for the book's two editions (English, and Chinese from the same sources).

* **Language switch.** Every page links to its twin in the other edition, in the article header
  next to the download button: "中文" on an English page (``zh/<page>.html``), "English" on a
  Chinese page. The link is relative, so it works when the book is opened from disk (file://)
  and when it is served.
* **Pages not translated yet.** In the Chinese edition, a page that is not listed in
  ``locale/translated_pages.yml`` says so in its header (its prose is the English source).
* **Part captions of the sidebar.** Sphinx's gettext machinery never sees the captions of
  _toc.yml (sphinx-external-toc inserts them after the translation step), so they have a
  catalogue of their own, ``locale/<language>/LC_MESSAGES/_toc.po`` (its template is written by
  ``scripts/build_editions.py pot``), applied here.
* **Search in Chinese.** Sphinx indexes Chinese text with jieba (a dependency of PaddleNLP, so
  always installed here), whose dictionary does not know this book's compound terms (线性探针,
  学习率倍率, 全归约, ...): it would cut them into pieces that a search for the whole term does not
  find. The Chinese column of book/glossary.md becomes a jieba user dictionary
  (``html_search_options["dict"]``), so every glossary term is a search word.
* **Translation report.** In the Chinese edition, every paragraph, heading, table cell or
  caption that Sphinx looked up in its page's catalogue and did not find translated (missing,
  empty or fuzzy msgstr) is recorded in ``<outdir>/_i18n_report.json``. tests/test_i18n.py reads
  it: it catches a catalogue that no longer matches its page (English prose edited, catalogue
  not updated), which the catalogue alone cannot show.

Which directory holds which edition is fixed here: English at the root of ``_build/html``,
Chinese in its ``zh/`` folder (scripts/build_editions.py builds both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes

ROOT = Path(__file__).resolve().parents[1]
TRANSLATED_PAGES = ROOT / "locale" / "translated_pages.yml"
TEMPLATES = Path(__file__).resolve().parent / "templates"
TOC_DOMAIN = "_toc"  # the catalogue of _toc.yml's captions (no docname starts with "_")
SUBDIR = {"zh_CN": "zh"}  # language -> folder of that edition under the English edition
REPORT = "_i18n_report.json"


def translated_pages(language: str = "zh_CN") -> list[str]:
    """The pages of an edition that must be fully translated (docnames, book order)."""
    import yaml

    data = yaml.safe_load(TRANSLATED_PAGES.read_text(encoding="utf-8")) or {}
    return list(data.get(language) or [])


def _is_english(language: str | None) -> bool:
    return not language or language.split("_")[0] == "en"


def _add_header_item(app, config) -> None:
    """Put the switch in the article header, before the theme's own buttons."""
    options = dict(config.html_theme_options or {})
    end = options.get("article_header_end") or ["article-header-buttons.html"]
    if isinstance(end, str):
        end = [item.strip() for item in end.split(",") if item.strip()]
    if "edition-switch.html" not in end:
        end = ["edition-switch.html", *end]
    options["article_header_end"] = end
    config.html_theme_options = options
    config.templates_path = [*config.templates_path, str(TEMPLATES)]
    config.html_static_path = [*config.html_static_path, str(TEMPLATES / "static")]


GLOSSARY = ROOT / "book" / "glossary.md"


def glossary_terms(path: Path = GLOSSARY) -> list[str]:
    """The Chinese terms of the glossary's tables (second column), variants in brackets split."""
    import re

    terms: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.search(r"[\u4e00-\u9fff]", cells[1]) or cells[1] == "中文":
            continue
        for term in re.split(r"[（）()，,]", cells[1]):
            for word in term.split():  # "BatchNorm 推理模式": a dictionary word has no space
                if len(word) > 1 and re.search(r"[\u4e00-\u9fff]", word) and word not in terms:
                    terms.append(word)
    return terms


def _search_dictionary(app) -> None:
    if _is_english(app.config.language) or not GLOSSARY.exists():
        return
    userdict = Path(app.doctreedir) / "jieba_userdict.txt"
    userdict.parent.mkdir(parents=True, exist_ok=True)
    userdict.write_text("".join(f"{term}\n" for term in glossary_terms()), encoding="utf-8")
    app.config.html_search_options = {**(app.config.html_search_options or {}),
                                      "dict": str(userdict)}


def _twin(app, pagename: str) -> dict[str, str]:
    up = "../" * pagename.count("/")
    target = app.builder.get_target_uri(pagename)
    if _is_english(app.config.language):
        sub = SUBDIR["zh_CN"]
        return {"url": f"{up}{sub}/{target}", "label": "中文", "lang": "zh-CN",
                "title": "中文版的同一页"}
    return {"url": f"{up}../{target}", "label": "English", "lang": "en",
            "title": "The same page in the English edition"}


def _page_context(app, pagename, templatename, context, doctree) -> None:
    context["edition_twin"] = _twin(app, pagename)
    language = app.config.language
    context["edition_untranslated"] = (
        not _is_english(language) and doctree is not None
        and pagename not in translated_pages(language))


def toc_captions(root: Path = ROOT) -> list[str]:
    """The part captions of _toc.yml, in order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    return [part["caption"] for part in toc.get("parts", []) if part.get("caption")]


def _translate_toc_captions(app, doctree) -> None:
    if _is_english(app.config.language) or app.builder.name == "gettext":
        return
    toctrees = [node for node in doctree.findall(addnodes.toctree) if node.get("caption")]
    if not toctrees:
        return
    po = Path(app.srcdir) / "locale" / app.config.language / "LC_MESSAGES" / f"{TOC_DOMAIN}.po"
    catalog = None
    if po.exists():
        from babel.messages.pofile import read_po

        with po.open("rb") as f:
            catalog = read_po(f)
    missing = []
    for node in toctrees:
        message = catalog.get(node["caption"]) if catalog is not None else None
        if message is None or not message.string or message.fuzzy:
            missing.append(node["caption"])
            continue
        node["caption"] = node["rawcaption"] = message.string
    _report(app)[TOC_DOMAIN] = {"catalogue": catalog is not None, "messages": len(toctrees),
                                "untranslated": missing}


def _report(app) -> dict:
    if not hasattr(app.env, "edition_report"):
        app.env.edition_report = {}
    return app.env.edition_report


def _record_untranslated(app, doctree) -> None:
    """After Sphinx's Locale transform: which messages of this page stayed in English."""
    if _is_english(app.config.language) or app.builder.name == "gettext":
        return
    flagged = [node for node in doctree.findall(nodes.Element) if "translated" in node]
    missing = [node.astext().strip()[:120] for node in flagged if not node["translated"]]
    _report(app)[app.env.docname] = {
        "catalogue": bool(flagged), "messages": len(flagged), "untranslated": missing}


def _purge(app, env, docname) -> None:
    getattr(env, "edition_report", {}).pop(docname, None)


def _merge(app, env, docnames, other) -> None:
    if not hasattr(env, "edition_report"):
        env.edition_report = {}
    env.edition_report.update(getattr(other, "edition_report", {}))


def _write_report(app, exception) -> None:
    if exception is not None or _is_english(app.config.language):
        return
    if app.builder.format != "html":
        return
    report = dict(sorted(getattr(app.env, "edition_report", {}).items()))
    (Path(app.outdir) / REPORT).write_text(
        json.dumps({"language": app.config.language, "pages": report},
                   ensure_ascii=False, indent=1), encoding="utf-8")


def setup(app) -> dict[str, Any]:
    app.connect("config-inited", _add_header_item)
    app.add_css_file("edition-switch.css")
    app.connect("builder-inited", _search_dictionary)
    app.connect("doctree-read", _record_untranslated)
    app.connect("doctree-read", _translate_toc_captions, priority=100)  # before the collectors
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _write_report)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
