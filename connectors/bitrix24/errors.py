"""Bitrix24's REST error codes, for the one HTTP classifier (:func:`connectors.http_errors.classify`).

The portal answers many refusals with HTTP 200/400 and an ``error`` code in the body; this table
says which of them mean "slow down", "wrong credentials", "try again" or "no such method".
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["rate", "auth", "transient", "not-found"]

RATE_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT"})
AUTH_CODES = frozenset({"NO_AUTH_FOUND", "INVALID_CREDENTIALS", "expired_token", "invalid_token", "ACCESS_DENIED",
                        "insufficient_scope", "WRONG_AUTH_TYPE", "authorization_error", "PAYMENT_REQUIRED"})
TRANSIENT_CODES = frozenset({"INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER"})
NOT_FOUND_CODES = frozenset({"ERROR_METHOD_NOT_FOUND"})


class Bitrix24Codes:
    """The :class:`connectors.platform.ErrorCodes` hook of Bitrix24."""

    _KINDS: dict[str, Kind] = {**{c: "not-found" for c in NOT_FOUND_CODES}, **{c: "transient" for c in TRANSIENT_CODES},
                               **{c: "auth" for c in AUTH_CODES}, **{c: "rate" for c in RATE_CODES}}

    def kind_of(self, code: str) -> Kind | None:
        return self._KINDS.get(code)


BITRIX24_CODES = Bitrix24Codes()
