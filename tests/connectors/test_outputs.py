"""Outputs people open: CSV cells stay text in spreadsheets, user text stays text in Markdown,
customer data is 0600 in 0700 directories. Properties over any text hypothesis can make."""

from __future__ import annotations

import csv
import re
import stat

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from connectors.outputs import markdown_text, neutralise_cell, plain_text, write_csv, write_private_text

FORMULA_SIGNS = "=+-@\t\r\n\uff1d\uff0b\uff0d\uff20"
BLANKS = " \u00a0\u3000"
# text that reaches a spreadsheet or a report: anything, with formula signs, blanks and Markdown
# punctuation made likely
TEXT = st.text(alphabet=st.one_of(st.sampled_from(FORMULA_SIGNS + BLANKS + "<>&\"'`*_[]()#|~!\\:/.-1a"),
                                  st.characters(codec="utf-8")), max_size=40)


def _starts_formula(text: str) -> bool:
    return text.lstrip(BLANKS)[:1] in set(FORMULA_SIGNS) if text.lstrip(BLANKS) else False


@given(TEXT)
def test_no_cell_starts_a_formula(text):
    out = neutralise_cell(text)
    number = re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text) is not None
    if _starts_formula(text) and not number:
        assert out == "'" + text
    else:
        assert out == text
    assert neutralise_cell(out) == out  # once is enough: an apostrophe starts no formula


def test_non_text_cells_and_numbers_stay():
    assert [neutralise_cell(v) for v in (3, -2.5, None, "-5", "+1.5e3", "ok")] == [3, -2.5, None, "-5", "+1.5e3", "ok"]
    assert [neutralise_cell(v) for v in (" =1", "\u3000\uff1dSUM(A1)", "-cmd", "@x")] == \
        ["' =1", "'\u3000\uff1dSUM(A1)", "'-cmd", "'@x"]


@settings(max_examples=60)
@given(st.lists(TEXT, min_size=1, max_size=5))
def test_a_csv_reads_back_neutralised_and_private(tmp_path_factory, texts):
    out = tmp_path_factory.mktemp("csv") / "private" / "rows.csv"
    path = write_csv(pd.DataFrame({"=header": texts}), out)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["'=header"]
    assert [r[0] for r in rows[1:]] == [str(neutralise_cell(t)) for t in texts]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_plain_text_drops_controls_and_bidi_overrides():
    assert plain_text("a\x00b\u202ecba\u2066 c\n\n# d\t") == "abcba c # d"


def test_every_directory_it_creates_is_private(tmp_path):
    path = write_private_text(tmp_path / "out" / "runs" / "r1" / "plan.md", "x")
    assert [stat.S_IMODE(d.stat().st_mode) for d in (path.parent, path.parent.parent, path.parent.parent.parent)] \
        == [0o700] * 3


def test_a_rewritten_file_becomes_private(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(0o644)
    write_private_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600


MD = MarkdownIt("commonmark").enable("table").enable("strikethrough")


def _inline_tokens(tokens):
    return [c for t in tokens if t.type == "inline" for c in t.children]


@settings(max_examples=400)
@given(TEXT)
def test_user_text_in_markdown_stays_text(text):
    """Whatever a person types (a sign-off comment, a note), the Markdown renders one paragraph of
    plain text with the same words: no heading, link, image, emphasis, code or HTML."""
    tokens = MD.parse("Comment: " + markdown_text(text))
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    kinds = {c.type for c in _inline_tokens(tokens)}
    assert kinds <= {"text", "softbreak"}, kinds
    rendered = "".join(c.content for c in _inline_tokens(tokens))
    assert rendered == ("Comment: " + plain_text(text)).strip()


@settings(max_examples=300)
@given(st.lists(TEXT, min_size=2, max_size=2))
def test_user_text_in_a_table_cell_stays_in_its_cell(cells):
    from journal.export import markdown_table

    table = markdown_table([{"a": cells[0], "b": cells[1]}], ["a", "b"])
    tokens = MD.parse(table)
    assert sum(t.type == "tr_open" for t in tokens) == 2  # the header and our one row
    assert sum(t.type == "td_open" for t in tokens) == 2
    cell_text = ["".join(c.content for c in t.children) for t in tokens if t.type == "inline"][2:]
    assert cell_text == [plain_text(c) for c in cells]
    assert {c.type for c in _inline_tokens(tokens)} <= {"text", "softbreak"}
