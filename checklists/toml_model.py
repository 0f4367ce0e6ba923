"""Read a TOML file into a pydantic model, reporting every problem at once as a ConfigError."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from connectors.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | Path, *, missing: str) -> dict:
    """The parsed file; ``missing`` is the message when it does not exist (say what to do)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [missing]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None


def validation_problems(exc: ValidationError, *, union_tags: dict[str, set[str]] | None = None) -> list[str]:
    """One line per problem, each naming its dotted key: ``[phases.0.steps.1.owner] …``.

    ``union_tags``: section → the tags of its discriminated union; pydantic puts the chosen tag into
    the location (``backup.urls.part_urls``), which is no key of the file, so it is dropped."""
    tags = union_tags or {}
    lines = []
    for e in exc.errors():
        loc = list(e["loc"])
        if len(loc) > 1 and loc[0] in tags and loc[1] in tags[loc[0]]:
            del loc[1]
        lines.append(f"[{'.'.join(map(str, loc)) or '<top level>'}] {e['msg'].removeprefix('Value error, ')}")
    return lines


def load_model(path: str | Path, model: type[M], *, missing: str) -> M:
    """Read ``path`` and validate it as ``model``; ConfigError lists every problem with its key."""
    raw = read_toml(path, missing=missing)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), validation_problems(exc)) from None


def require_unique_ids(ids: list[str], what: str) -> None:
    """Raise ValueError naming every id used more than once (``what``: "step", "risk", "check")."""
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} ids {dupes}")
