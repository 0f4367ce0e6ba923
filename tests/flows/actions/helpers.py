"""What an action's tests build instead of a run: a real, validated config."""

from __future__ import annotations

from flows.config import Config, config_from_dict


def action_config(**sections: dict) -> Config:
    """The :class:`Config` of the TOML-shaped ``sections``, validated as a config file would be;
    ``[migration]`` defaults to a test portal on loopback."""
    raw = {"migration": {"name": "t", "portal": "http://127.0.0.1"}, **sections}
    return config_from_dict(raw, source="test.toml")
