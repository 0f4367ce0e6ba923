"""The registry of CRM platforms, selected by ``[migration] platform``.

Adding a platform is one package ``connectors/<name>/`` with a ``platform`` module that defines
``PLATFORM`` (a :class:`connectors.platform.Platform`) and one line in ``_REGISTRY``. Nothing
else in the product names a platform; tests/test_platform_boundary.py checks it.
"""

from __future__ import annotations

import importlib
import threading

from .errors import ConfigError
from .platform import Platform

_REGISTRY: dict[str, str] = {  # name → module defining PLATFORM
    "bitrix24": "connectors.bitrix24.platform",
}
DEFAULT = "bitrix24"

_loaded: dict[str, Platform] = {}
_lock = threading.RLock()


def names() -> list[str]:
    """The registered platform names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, *, source: str = "the configuration") -> Platform:
    """The platform called ``name``, imported on first use; its redaction patterns are registered then.

    Raises:
        ConfigError: no platform has that name (the message lists the known ones; ``source`` is the
            config file it names).
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name not in _REGISTRY:
            known = ", ".join(names())
            raise ConfigError(source, [f"[migration] platform = {name!r} is not a known platform; known: {known}"])
        platform = importlib.import_module(_REGISTRY[name]).PLATFORM
        if not isinstance(platform, Platform) or platform.name != name:
            raise TypeError(f"{_REGISTRY[name]}.PLATFORM must be a connectors.platform.Platform named {name!r}")
        from .secrets import register_redaction

        for pattern in platform.redaction:
            register_redaction(pattern)
        _loaded[name] = platform
        return platform


def default() -> Platform:
    """The platform used when the config does not name one."""
    return get(DEFAULT)


def load_all() -> list[Platform]:
    """Every registered platform (e.g. so that every platform's secrets are masked)."""
    return [get(n) for n in names()]
