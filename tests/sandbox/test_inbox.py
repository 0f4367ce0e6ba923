"""The people's inboxes: what apprise's json:// delivers to a person is listed at their path, and
only there; a message over the bound is refused."""

from __future__ import annotations

import apprise
import requests

from sandbox.inbox import MAX_BODY, start_inbox


def test_a_notice_lands_in_its_persons_inbox_only():
    with start_inbox() as inbox:
        ap = apprise.Apprise()
        assert ap.add(inbox.contact("Dana Demo") + "?cto=5&rto=5")
        assert ap.notify(title="Your sign-off is needed", body="**Your one-time code:** 12345678")
        (message,) = requests.get(inbox.page("Dana Demo"), timeout=5).json()
        assert (message["title"], message["message"]) == ("Your sign-off is needed", "**Your one-time code:** 12345678")
        assert inbox.messages("Alex Engineer") == [] and inbox.messages("dana demo") == [message]
        too_big = requests.post(inbox.page("Dana Demo"), data="x" * (MAX_BODY + 1), timeout=5)
        assert too_big.status_code == 413 and len(inbox.messages("Dana Demo")) == 1
