"""lograte.py: a line a peer can make us repeat is said once per interval, then with a count."""

import logging

import lograte

log = logging.getLogger("vncterm.test-lograte")


def said(caplog):
    return [record.getMessage() for record in caplog.records if record.name == log.name]


def test_said_once_then_counted(caplog):
    now = [100.0]
    line = lograte.RateLimitedLog(log, logging.WARNING, "dropped %d bytes", interval=10.0,
                                  clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=log.name):
        for size in range(1, 1001):
            line(size)
        assert said(caplog) == ["dropped 1 bytes"]
        now[0] += 10.0
        line(7)
        now[0] += 5.0
        line(8)
        now[0] += 5.0
        line(9)
    assert said(caplog) == [
        "dropped 1 bytes", "dropped 7 bytes (999 like it held back)",
        "dropped 9 bytes (1 like it held back)"]


def test_each_line_keeps_its_own_count(caplog):
    now = [0.0]
    first = lograte.RateLimitedLog(log, logging.WARNING, "first", clock=lambda: now[0])
    second = lograte.RateLimitedLog(log, logging.WARNING, "second", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=log.name):
        first()
        first()
        second()
    assert said(caplog) == ["first", "second"]
