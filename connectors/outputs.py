"""Files people open: CSV cells a spreadsheet keeps as text, Markdown that keeps user text as text,
and files of customer data that only their owner can read.

Every CSV and every Markdown output of cloud2box goes through here, so one rule holds for all of
them:

- :func:`neutralise_cell`: a cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``,
  tab, CR — also after leading blanks and in their full-width forms ``＝＋－＠``) gets a leading
  apostrophe; a plain number stays a number.
- :func:`markdown_text`: text typed by a person or read from a portal, made inert in Markdown:
  one line, HTML and the characters that start Markdown constructs (links, images, emphasis,
  code, headings, tables) escaped, so a comment cannot add a heading, a ``javascript:`` link or
  raw HTML to a report or a Prefect artifact.
- :func:`write_csv` / :func:`write_private_text`: the file 0600 in a 0700 directory, links not
  followed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from connectors.http_download.disk import make_private_dir, open_private

__all__ = ["Markdown", "markdown_text", "neutralise_cell", "plain_text", "safe_frame", "write_csv", "write_private_text"]

# blanks a spreadsheet skips before it looks for a formula sign, then the signs (ASCII and full-width)
_FORMULA = re.compile(r"^[ \u00a0\u3000]*[=+\-@\uff1d\uff0b\uff0d\uff20\t\r\n]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# the punctuation that opens or closes an inline construct (the text is one line, always after
# other content, so block markers such as "-", "+" or "1." at its start cannot open a block;
# "(" only continues a link after "]", and a "_" between two letters or digits opens no emphasis)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]#|~]|(?<![^\W_])_|_(?![^\W_]))")
_BARE_PIPE = re.compile(r"(?<!\\)\|")
# C0/C1 controls but the whitespace ones, and the bidi embeddings, overrides and isolates that can
# make text read differently from what it is (Trojan Source)
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def neutralise_cell(value):
    """``value`` as a spreadsheet must show it: text that would start a formula gets a leading
    apostrophe; numbers, and text that is a plain number ("-3"), stay as they are."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text cell neutralised (headers included)."""
    out = df.map(neutralise_cell)
    out.columns = [neutralise_cell(c) for c in out.columns]
    return out


class Markdown(str):
    """Markdown that cloud2box composed itself (a bold label, a *fix:* hint): :func:`markdown_text`
    keeps its formatting. Whatever came from a person or a portal inside it must already have gone
    through :func:`markdown_text`."""


def plain_text(value) -> str:
    """``value`` as one line of printable text: control and bidi-override characters dropped,
    every run of whitespace (newlines included) one space."""
    if value is None:
        return ""
    return " ".join(_UNPRINTABLE.sub("", str(value)).split())


def markdown_text(value) -> str:
    """``value`` as inert inline Markdown: :func:`plain_text` (newlines would start blocks: headings,
    lists, tables), then HTML entities and the construct characters escaped. :class:`Markdown` is
    kept as it is, but for its pipes (it may stand in a table cell)."""
    if isinstance(value, Markdown):
        return _BARE_PIPE.sub(r"\\|", " ".join(value.split()))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", plain_text(value).translate(_HTML))


def _open_private_text(path: Path):
    make_private_dir(path.parent)
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` neutralised to ``path`` (0600, in a 0700 directory); returns the path."""
    path = Path(path)
    with _open_private_text(path) as f:
        # CRLF as RFC 4180 has it: the writer then quotes every cell holding a \r or a \n
        safe_frame(frame).to_csv(f, index=False, lineterminator="\r\n")
    return path


def write_private_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (0600, in a 0700 directory); returns the path."""
    path = Path(path)
    with _open_private_text(path) as f:
        f.write(text)
    return path
