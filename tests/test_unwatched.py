"""A console nobody watches keeps nothing rendered and never wakes.

A host serves a console per domain and nearly nobody looks at them, so an unwatched console
must cost neither memory nor CPU.  Its picture goes when the last viewer leaves and comes back
right, compared with a display that never dropped its own (the view scrolled into the compact
scrollback, colours included) and seen by a real viewer, vncdotool, before and after.  Its
reader, once the output has been taken and told and the scrollback compacted, waits with no
timeout: a counting selector records every timeout the reader asks for.  A console that never
falls quiet is still compacted, once an interval has passed (an injected clock).
"""

import contextlib
import os
import selectors
import subprocess
import tty
from types import SimpleNamespace

import console
import display
import peers
import render
import service
import sources
import vncterm
import webhost
from harness import FakeSource
from peers import Block
from peers import wait_until as wait_for

GLYPHS = render.Glyphs(render.load_font(None)[0])
FIRST = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
SECOND = (Block("red", 40, 10), Block("green", 2, 22), Block("blue", 72, 1))


def log_lines(first, count):
    colours = ["\x1b[0;32m", "\x1b[1;31m", "\x1b[7m", "\x1b[0;1;44m"]
    return "".join(f"{colours[number % 4]}line {number}\x1b[0m of the log\r\n"
                   for number in range(first, first + count)).encode()


def picture(changes):
    (x, y, image), = changes.tiles
    return image.tobytes()


def ignore():
    pass


def test_the_last_viewer_to_leave_takes_the_picture_and_a_new_one_sees_it_redrawn():
    watched = display.ConsoleDisplay(console.Console(FakeSource(), 30, 8), GLYPHS)
    reference = display.ConsoleDisplay(console.Console(FakeSource(), 30, 8), GLYPHS)
    shown = [watched.console, reference.console]
    for term in shown:
        term.feed(log_lines(0, 20))
    watched.listeners.add(ignore)
    watched.listeners.add(print)
    first = watched.changes(None)
    reference.changes(None)  # a view into the scrollback follows the lines seen last
    watched.listeners.discard(print)
    assert watched.renderer is not None
    watched.listeners.discard(ignore)
    assert watched.renderer is None
    for term in shown:
        term.feed(log_lines(20, 30))
        term.scroll_view(11)
    watched.console.terminal.history.compact_pending()  # the reference's rows stay pyte's
    watched.listeners.add(ignore)
    again = watched.changes(first.token)
    assert again.full
    assert picture(again) == picture(reference.changes(None))


def test_a_snapshot_of_an_unwatched_console_leaves_nothing_rendered():
    shown = display.ConsoleDisplay(console.Console(FakeSource(), 30, 8), GLYPHS)
    reference = display.ConsoleDisplay(console.Console(FakeSource(), 30, 8), GLYPHS)
    for term in (shown.console, reference.console):
        term.feed(log_lines(0, 20))
    assert shown.snapshot().tobytes() == picture(reference.changes(None))
    assert shown.renderer is None
    shown.listeners.add(ignore)
    shown.snapshot()
    assert shown.renderer is not None


def paint(harness, blocks):
    subprocess.run(["sh", "-c", peers.paint_command(blocks)], stdout=harness.master, check=True)


def test_vncdotool_sees_the_console_before_and_after_its_picture_was_dropped(harness, tmp_path):
    peers.require("vncdotool")
    shown = harness()
    server = SimpleNamespace(address=f"127.0.0.1::{shown.port}")
    capture = tmp_path / "capture.png"
    for blocks in (FIRST, SECOND):
        paint(shown, blocks)
        errors = peers.until_no_errors(lambda blocks=blocks: peers.framebuffer_errors(
            peers.vncdo_capture(server, capture), blocks))
        assert not errors, "\n".join(errors)
        assert wait_for(lambda: shown.display.renderer is None)


class CountingSelector(selectors.DefaultSelector):
    """A selector that records the timeout of every select()."""

    timeouts: list = []

    def select(self, timeout=None):
        self.timeouts.append(timeout)
        return super().select(timeout)


def test_an_idle_reader_compacts_its_scrollback_then_waits_without_a_timeout(monkeypatch):
    monkeypatch.setattr(CountingSelector, "timeouts", [])
    monkeypatch.setattr(console.selectors, "DefaultSelector", CountingSelector)
    master, slave = os.openpty()
    tty.setraw(slave)
    term = console.Console(sources.PtySource(os.ttyname(slave)), 80, 25)
    term.start()
    try:
        assert wait_for(lambda: term.status == "")
        flood = log_lines(0, 2000)
        assert len(flood) > 16 * console.FLOOD_BYTES
        os.write(master, flood)
        told = term.told
        shown = "line 1999 of the log"
        assert wait_for(lambda: term.told != told and CountingSelector.timeouts[-1] is None
                        and any(shown in line for line in term.terminal.display))
        assert len(term.terminal.history) == 1000
        assert term.terminal.history.pending == 0
    finally:
        term.stop()
        os.close(master)
        os.close(slave)


class Chunk(bytes):
    """A read that says when it is freed."""

    freed = 0

    def __del__(self):
        Chunk.freed += 1


class PipeSource(sources.FdSource):
    """The read end of a pipe, each read handed over as a Chunk."""

    name = "pipe"

    def __init__(self, fd):
        self.pipe = fd

    def open(self):
        self.fd = self.pipe

    def read(self):
        data = super().read()
        return Chunk(data) if data else data


def test_an_idle_reader_holds_no_read(monkeypatch):
    monkeypatch.setattr(CountingSelector, "timeouts", [])
    monkeypatch.setattr(console.selectors, "DefaultSelector", CountingSelector)
    monkeypatch.setattr(Chunk, "freed", 0)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    term = console.Console(PipeSource(read_end), 80, 25)
    term.start()
    try:
        os.write(write_end, b"hello\r\n")
        assert wait_for(lambda: Chunk.freed == 1 and CountingSelector.timeouts[-1] is None)
    finally:
        term.stop()
        os.close(write_end)


def test_a_console_that_keeps_printing_is_compacted_every_interval(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    term = console.Console(FakeSource(), 20, 5)
    history = term.terminal.history
    term.feed(log_lines(0, 30))
    term._compact_scrollback()
    assert history.pending == 0
    term.feed(log_lines(30, 3))
    assert history.pending == 3
    now[0] += console.COMPACT_INTERVAL / 4
    term._compact_scrollback()
    assert history.pending == 3
    assert term._quiet_timeout(polled=False) == 3 * console.COMPACT_INTERVAL / 4
    now[0] += console.COMPACT_INTERVAL
    term._compact_scrollback()
    assert history.pending == 0
    assert term._quiet_timeout(polled=False) is None


def test_a_thumbnail_of_an_unwatched_console_leaves_nothing_rendered():
    shown = display.ConsoleDisplay(console.Console(FakeSource(), 30, 8), GLYPHS)
    shown.console.feed(log_lines(0, 20))
    slot = SimpleNamespace(server=SimpleNamespace(console=shown))
    assert webhost.thumbnail(slot).startswith(b"\x89PNG")
    assert shown.renderer is None


def test_every_console_of_a_host_draws_with_one_glyphs():
    args = vncterm.parse_args(["--port", "0", "--no-desktop", "--command", "true"])
    font = render.load_font(None)[0]
    with contextlib.ExitStack() as stops:
        shown = [vncterm.start_console(args, font, service.Service(args), stops)[0].console
                 for _ in range(2)]
        assert shown[0].glyphs is shown[1].glyphs
