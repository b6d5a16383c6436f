"""The Chinese edition: complete catalogues for the translated pages, and the built edition.

The pages that must be fully translated are listed in ONE place, locale/translated_pages.yml
(README.md, "Chinese edition (中文版)", says how to add one). For each of them:

* its catalogue locale/zh_CN/LC_MESSAGES/<page>.po exists and has no untranslated (empty) and
  no fuzzy message (sphinx-intl marks a message fuzzy when its English source changed);
* after `make book`, the Chinese build left none of its prose in English (the build's report
  _build/html/zh/_i18n_report.json, written by scripts/edition_switch.py: this catches a
  catalogue that no longer matches its page, e.g. English prose edited, catalogue not updated);
* its built page _build/html/zh/<page>.html is mostly Chinese (more than half of the letters of
  its prose, code and outputs left out, are CJK).

For every page of _toc.yml: both editions exist and each page links to its twin. The search
index of the Chinese edition finds the glossary's Chinese terms.

The tests on the built book are skipped with a message when _build/html/zh is missing (run
`make book`); the catalogue tests need no build.
"""

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from edition_switch import REPORT, TOC_DOMAIN, glossary_terms, translated_pages  # noqa: E402
from toc_notebooks import toc_files  # noqa: E402

LANGUAGE = "zh_CN"
PO_DIR = ROOT / "locale" / LANGUAGE / "LC_MESSAGES"
HTML = ROOT / "_build" / "html"
ZH = HTML / "zh"
REQUIRED = translated_pages(LANGUAGE)
TOC_PAGES = [p.relative_to(ROOT).with_suffix("").as_posix() for p in toc_files()]
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


# What a translation must carry over unchanged: numbers (1,000 / 0.6947 / −2.6), inline code,
# math and link targets. A single digit may be written as a Chinese numeral (代码四 for
# "snippet 4"); nothing else may change.
NUMBER = re.compile(r"(?<![\w.])[-−+]?\d+(?:,\d{3})*(?:\.\d+)?(?!\d)")
KEPT = {"number": NUMBER, "code": re.compile(r"`[^`]+`"), "math": re.compile(r"\$[^$]+\$"),
        "link": re.compile(r"\]\(([^)]+)\)")}
CHINESE_DIGITS = "〇一二三四五六七八九"


def changed_tokens(english: str, chinese: str) -> list[str]:
    """The numbers, code, math and link targets of `english` that `chinese` does not keep."""
    chinese = chinese.replace("−", "-")
    missing = []
    for kind, pattern in KEPT.items():
        for token in sorted(set(pattern.findall(english))):
            if token.replace("−", "-") in chinese:
                continue
            if kind == "number" and token.isdigit() and len(token) == 1 \
                    and CHINESE_DIGITS[int(token)] in chinese:
                continue
            missing.append(f"{kind} {token!r}")
    return missing


def problems_in_catalogue(po: Path) -> list[str]:
    """Every message of a .po that a reader of the Chinese edition would see in English, or
    whose translation lost or changed a number, code span, formula or link of the English."""
    with po.open("rb") as f:
        catalog = read_po(f)
    problems = []
    for message in catalog:
        if not message.id:
            continue  # the header
        if message.fuzzy:
            problems.append(f"fuzzy: {message.id[:80]!r}")
        elif not (message.string or "").strip():
            problems.append(f"untranslated: {message.id[:80]!r}")
        elif missing := changed_tokens(message.id, message.string):
            problems.append(f"changed ({', '.join(missing)}): {message.id[:80]!r}")
    return problems


def test_required_pages_are_listed_once_and_in_the_toc():
    assert REQUIRED, "locale/translated_pages.yml lists no page"
    assert len(set(REQUIRED)) == len(REQUIRED), "a page is listed twice"
    assert not set(REQUIRED) - set(TOC_PAGES), (
        f"listed in locale/translated_pages.yml but not in _toc.yml: {set(REQUIRED) - set(TOC_PAGES)}")


@pytest.mark.parametrize("page", [*REQUIRED, TOC_DOMAIN])
def test_catalogue_is_complete(page):
    po = PO_DIR / f"{page}.po"
    assert po.exists(), (f"{po.relative_to(ROOT)} is missing: "
                         f"run `.venv/bin/python scripts/build_editions.py update {page}`")
    problems = problems_in_catalogue(po)
    assert not problems, (f"{po.relative_to(ROOT)}: {len(problems)} message(s) not translated:\n"
                          + "\n".join(problems[:20]))


def test_the_completeness_check_sees_a_blank_and_a_fuzzy_message(tmp_path):
    """The check above is not vacuous: one blanked msgstr, or one fuzzy flag, fails it."""
    source = PO_DIR / f"{REQUIRED[0]}.po"
    with source.open("rb") as f:
        catalog = read_po(f)
    messages = [m for m in catalog if m.id]
    from babel.messages.pofile import write_po

    for spoil in ("blank", "fuzzy"):
        with source.open("rb") as f:
            catalog = read_po(f)
        message = [m for m in catalog if m.id][len(messages) // 2]
        if spoil == "blank":
            message.string = ""
        else:
            message.flags.add("fuzzy")
        spoiled = tmp_path / f"{spoil}.po"
        with spoiled.open("wb") as f:
            write_po(f, catalog)
        assert problems_in_catalogue(spoiled) == [f"{'untranslated' if spoil == 'blank' else 'fuzzy'}: "
                                                   f"{message.id[:80]!r}"]


def test_the_check_sees_a_changed_number_code_span_and_link():
    english = "Full scores 84.58 % on 1,000 images with `lr=3e-4`; see [chapter 04](04_finetune_top.ipynb)."
    faithful = "全量微调在 1,000 张图上得到 84.58 %，`lr=3e-4`；见[第 04 章](04_finetune_top.ipynb)。"
    assert changed_tokens(english, faithful) == []
    assert changed_tokens("Snippet 4", "代码四") == []  # a single digit may be a Chinese numeral
    assert changed_tokens(english, faithful.replace("84.58", "84.85")) == ["number '84.58'"]
    assert changed_tokens(english, faithful.replace("1,000", "1000")) == ["number '1,000'"]
    assert changed_tokens(english, faithful.replace("`lr=3e-4`", "lr=3e-4")) == ["code '`lr=3e-4`'"]
    assert changed_tokens(english, faithful.replace("(04_finetune_top.ipynb)", "(04.ipynb)")) == [
        "link '04_finetune_top.ipynb'"]


def test_glossary_terms_are_the_chinese_column():
    terms = glossary_terms()
    for term in ["冻结", "学习率倍率", "线性探针", "灾难性遗忘", "低秩适配", "微调所有层", "微调顶层",
                 "冻结底层", "逐层微调", "迁移学习", "推理模式", "早停", "种子", "置信区间"]:
        assert term in terms, f"{term} is not in book/glossary.md"


# ---- The built editions (after `make book`) ---------------------------------------------------

def _needs_build():
    if not (ZH / "index.html").exists():
        pytest.skip("the Chinese edition is not built: run `make book` (it builds both editions)")


def _soup(path: Path):
    from bs4 import BeautifulSoup

    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def prose_text(path: Path) -> str:
    """The article's text without code cells, outputs, code spans and scripts."""
    soup = _soup(path)
    article = soup.select_one("article") or soup.select_one("main")
    for node in article.select("div.cell_input, div.cell_output, div.output, pre, code, script, "
                               "style, .headerlink, .highlight"):
        node.decompose()
    return article.get_text(" ")


def _twin_target(page_file: Path) -> Path:
    links = _soup(page_file).select("a.edition-switch")
    assert len(links) == 1, f"{page_file.relative_to(ROOT)}: {len(links)} language switches"
    href = links[0]["href"]
    assert not urlparse(href).scheme and not href.startswith("/"), (
        f"{page_file.relative_to(ROOT)}: the switch must be a relative link, not {href!r}")
    return (page_file.parent / href).resolve()


def test_build_report_lists_every_page():
    _needs_build()
    report = json.loads((ZH / REPORT).read_text(encoding="utf-8"))
    assert report["language"] == LANGUAGE
    assert set(report["pages"]) == {*TOC_PAGES, TOC_DOMAIN}


@pytest.mark.parametrize("page", [*REQUIRED, TOC_DOMAIN])
def test_build_left_no_prose_untranslated(page):
    """Catches a catalogue that is complete but no longer matches its page's English source."""
    _needs_build()
    entry = json.loads((ZH / REPORT).read_text(encoding="utf-8"))["pages"][page]
    assert entry["catalogue"], f"the Chinese build found no catalogue for {page}"
    assert entry["untranslated"] == [], (
        f"{page}: {len(entry['untranslated'])} of {entry['messages']} messages stayed English in "
        "the Chinese build (the catalogue does not match the page: run "
        "`.venv/bin/python scripts/build_editions.py update`, translate, rebuild):\n"
        + "\n".join(entry["untranslated"][:10]))


@pytest.mark.parametrize("page", REQUIRED)
def test_translated_page_is_mostly_chinese(page):
    _needs_build()
    text = prose_text(ZH / f"{page}.html")
    cjk, latin = len(CJK.findall(text)), len(LATIN.findall(text))
    share = cjk / max(1, cjk + latin)
    print(f"{page}: {cjk} CJK and {latin} Latin letters in the prose, {share:.0%} CJK")
    assert share > 0.5, f"{page}: only {share:.0%} of the prose letters are CJK"
    # Markdown emphasis closed after Chinese punctuation (`**原因。**后文`) is not parsed.
    assert "**" not in text, f"{page}: literal ** in the prose: {text[text.index('**') - 30:][:60]!r}"
    assert "edition-untranslated" not in (ZH / f"{page}.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", TOC_PAGES)
def test_each_page_links_to_its_twin(page):
    _needs_build()
    english, chinese = HTML / f"{page}.html", ZH / f"{page}.html"
    assert english.exists() and chinese.exists(), f"{page}: missing in one edition"
    assert _twin_target(english) == chinese.resolve(), f"{page}: the English page's switch"
    assert _twin_target(chinese) == english.resolve(), f"{page}: the Chinese page's switch"
    assert _soup(chinese).html.get("lang") == "zh-CN"
    if page not in REQUIRED:  # built from the English source, and says so
        assert "edition-untranslated" in chinese.read_text(encoding="utf-8")


def test_search_index_finds_chinese_terms():
    """Sphinx's Chinese search (jieba, with the glossary as user dictionary) indexes whole terms."""
    _needs_build()
    text = (ZH / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1:text.rindex(")")])
    docnames = index["docnames"]

    def pages_with(word):
        found = set()
        for key in ("terms", "titleterms"):
            hits = index[key].get(word, [])
            found |= {docnames[i] for i in ([hits] if isinstance(hits, int) else hits)}
        return found

    missing = [term for term in glossary_terms() if "book/glossary" not in pages_with(term)]
    assert not missing, f"the search does not find these glossary terms on the glossary: {missing}"
    for word, page in [("线性探针", "book/02_transformer_context"), ("全归约", "book/11_scaling_out"),
                       ("分类头", "book/10_original_snippets"), ("算术指纹", "book/environment")]:
        assert page in pages_with(word), f"searching {word} does not find {page}"
