"""Console output that is cheap to send and costly to take: it must not freeze the console,
hold up the viewers' keys or shutdown, or fill dom0's disk through our log."""

import logging

import console
from test_console import FakeSource


class FullSource(FakeSource):
    """A console program that never reads its input."""

    def write(self, data):
        return 0


def test_a_flood_of_unread_answers_is_logged_once(caplog):
    term = console.Console(FullSource(), 20, 4)
    term.write(b"x" * console.OUTBOX_LIMIT)
    with caplog.at_level(logging.WARNING, logger="vncterm.console"):
        term.feed(b"\x1b[6n\x1b[c" * 10000)
    dropped = [r for r in caplog.records if "not reading its input" in r.getMessage()]
    assert len(dropped) == 1
