"""The corpus of broken configs (tests/flows/broken_configs/*.toml): ``cloud2box check`` on each
gives a clear error naming the problem and the fix — no traceback, no secret value, every problem
of the file in one pass. Each file says what is wrong (``# wrong:``) and what the output must
contain (``# expect:``, one line per fragment)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.cli import main

CORPUS = sorted((Path(__file__).parent / "broken_configs").glob("*.toml"))
SECRET_MARK = "SEKRET"  # every secret value pasted into the corpus carries it


def _header(path: Path, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^# {key}: (.+)$", path.read_text(encoding="utf-8")[:2000],
                                                    re.MULTILINE)]


def _check(path: Path, capsys) -> tuple[int, str]:
    os.environ.pop("C2B_BROKEN_CORPUS_UNSET", None)
    rc = main(["check", "--config", str(path), "--timeout", "3"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_the_corpus_is_big_and_every_file_says_what_is_wrong():
    assert len(CORPUS) >= 30
    for path in CORPUS:
        assert _header(path, "wrong") and _header(path, "expect"), path.name


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_broken_config_gives_one_clear_error(path, capsys):
    rc, output = _check(path, capsys)
    assert rc in (1, 2), output  # 2: the file is wrong; 1: it is valid but a check failed
    flat = " ".join(output.split())  # the check table folds long cells
    for fragment in _header(path, "expect"):
        assert " ".join(fragment.split()) in flat, f"{path.name}: {fragment!r} not in:\n{output}"
    assert "Traceback" not in output
    assert SECRET_MARK not in output
    assert "fix" in output.lower()  # every failure says what to do
    assert "\x00" not in output and "\u202e" not in output
    assert len(output) < 20_000  # a huge value is not echoed back


def test_a_config_error_lists_schema_and_secret_problems_together(capsys):
    rc, output = _check(Path(__file__).parent / "broken_configs" / "28_schema_and_secret_together.toml", capsys)
    assert rc == 2 and "2 problem(s)" in output


def test_a_pasted_secret_is_not_in_pydantics_input_value_either(tmp_path):
    """The ConfigError and anything chained to it: a --debug traceback shows no value either."""
    import traceback

    from connectors.errors import ConfigError
    from flows.config import load_config

    path = Path(__file__).parent / "broken_configs" / "12_webhook_pasted_into_name_field.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "".join(traceback.format_exception(info.value))
    assert SECRET_MARK not in text and "must be the NAME" in text


_HOSTILE = st.text(alphabet=st.sampled_from(["a", " ", "\x00", "\x1b", "\u202e", "\u2066", "\x7f", "é", "\u0085"]),
                   min_size=1, max_size=40).filter(lambda t: re.search("[\x00\x1b\u202e\u2066\x7f\u0085]", t))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_HOSTILE, key=st.sampled_from(["name", "contact", "portal", "timezone"]))
def test_hostile_characters_in_any_config_string_are_named_never_echoed(tmp_path, value, key):
    from connectors.errors import ConfigError
    from flows.config import config_from_dict

    raw = {"migration": {"name": "acme", "portal": "https://acme.bitrix24.ru", key: value}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="hostile.toml")
    text = str(info.value)
    assert f"[migration.{key}] contains a control character" in text
    assert not re.search("[\x00\x1b\u202e\u2066\x7f\u0085]", text)
