"""The clipboard: the Extended Clipboard's wire format, each side's link, paste, selection, typing.

The Extended Clipboard readers (rfb.ClientReader for viewers, rfbclient.ServerReader for the
guest) get h11's recipe: each message whole, one byte at a time, and followed by trailing
bytes.  The wire bytes are written out by hand from rfbproto's description (flags, sizes, a
zlib stream of size and NUL-terminated CR LF text), not produced by rfb.py.
"""

import struct
import zlib

import pytest

import clipboard
import console
import display
import keymap
import render
import rfb
import rfbclient
import selection
import sources
import vncproxy
import vt
from rfb import Clipboard

CAPS, REQUEST, PEEK, NOTIFY, PROVIDE = (1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28)


def extended(kind, flags, data=b""):
    body = struct.pack(">I", flags) + data
    return struct.pack(">B3xI", kind, 0x100000000 - len(body)) + body


def provided(text: bytes, kind=6):
    return extended(kind, PROVIDE | 1, zlib.compress(struct.pack(">I", len(text)) + text))


EXTENDED = [
    (extended(6, CAPS | REQUEST | NOTIFY | PROVIDE | 1, struct.pack(">I", 1000)),
     rfb.ExtendedClipboard(Clipboard.CAPS | Clipboard.REQUEST | Clipboard.NOTIFY
                           | Clipboard.PROVIDE, 1, (1000,))),
    (extended(6, CAPS | PROVIDE | 0b101, struct.pack(">II", 20, 30)),
     rfb.ExtendedClipboard(Clipboard.CAPS | Clipboard.PROVIDE, 0b101, (20, 30))),
    (extended(6, REQUEST | 1), rfb.ExtendedClipboard(Clipboard.REQUEST, 1)),
    (extended(6, PEEK), rfb.ExtendedClipboard(Clipboard.PEEK, 0)),
    (extended(6, NOTIFY | 1), rfb.ExtendedClipboard(Clipboard.NOTIFY, 1)),
    (provided("grüße\r\n€ and ☃".encode() + b"\0"),
     rfb.ExtendedClipboard(Clipboard.PROVIDE, 1, text="grüße\n€ and ☃")),
    (extended(6, PROVIDE | 4, zlib.compress(b"\0\0\0\1x")),
     rfb.ExtendedClipboard(Clipboard.PROVIDE, 4, text=None)),
]


def client_reader():
    reader = rfb.ClientReader()
    reader.extended_clipboard = True
    return reader


def read_all(reader):
    messages = []
    while (message := reader.next_message()) is not None:
        messages.append(message)
    return messages


@pytest.mark.parametrize("data,expected", EXTENDED)
def test_extended_whole(data, expected):
    reader = client_reader()
    reader.feed(data)
    assert read_all(reader) == [expected]


@pytest.mark.parametrize("data,expected", EXTENDED)
def test_extended_byte_by_byte(data, expected):
    reader, seen = client_reader(), []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        seen += read_all(reader)
        assert seen == ([] if i < len(data) - 1 else [expected])


@pytest.mark.parametrize("data,expected", EXTENDED)
def test_extended_trailing_data_stays(data, expected):
    reader = client_reader()
    reader.feed(data + b"\x04\x01\x00")
    assert reader.next_message() == expected
    assert reader.next_message() is None
    reader.feed(b"\x00\x00\x00\x00\x61")
    assert reader.next_message() == rfb.KeyEvent(True, 0x61)


@pytest.mark.parametrize("data,expected", EXTENDED)
def test_extended_from_the_guest_whole_byte_by_byte_and_trailing(data, expected):
    data = b"\x03" + data[1:]
    reader, seen = rfbclient.ServerReader(16, 16), []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        while (event := reader.next_event()) is not None:
            seen.append(event)
    reader.feed(data + b"\x02")
    while (event := reader.next_event()) is not None:
        seen.append(event)
    assert seen == [expected, expected, rfbclient.Bell()]


def test_extended_is_refused_until_offered():
    reader = rfb.ClientReader()
    reader.feed(extended(6, PEEK))
    with pytest.raises(rfb.ProtocolError, match="extended clipboard not offered"):
        reader.next_message()


@pytest.mark.parametrize("data,reason", [
    (struct.pack(">B3xI", 6, 0xFFFFFFFE) + b"\0\0", "no room for its flags"),
    (extended(6, 1), "name no action"),
    (extended(6, CAPS | 0b11, struct.pack(">I", 5)), "lack their sizes"),
    (extended(6, PROVIDE | 1, b"not zlib"), "bad zlib"),
    (extended(6, PROVIDE | 1, zlib.compress(b"\0\0")), "text size missing"),
])
def test_broken_extended_messages_are_protocol_errors(data, reason):
    reader = client_reader()
    reader.feed(data)
    with pytest.raises(rfb.ProtocolError, match=reason):
        reader.next_message()


def test_a_zlib_bomb_inflates_only_to_the_cap():
    text = b"a" * (64 * rfb.CUT_TEXT_LIMIT)
    reader = client_reader()
    reader.feed(provided(text))
    (message,) = read_all(reader)
    assert message.text == "a" * (rfb.CUT_TEXT_LIMIT)


def test_a_huge_extended_body_streams_and_keeps_the_capped_part():
    reader = client_reader()
    stream = zlib.compress(struct.pack(">I", 10) + b"0123456789")
    size = 4 + len(stream) + 3 * rfb.CUT_TEXT_LIMIT
    reader.feed(struct.pack(">B3xII", 6, 0x100000000 - size, PROVIDE | 1) + stream)
    messages = read_all(reader)
    for _ in range(3):
        reader.feed(bytes(rfb.CUT_TEXT_LIMIT))
        messages += read_all(reader)
        assert len(reader._buffer) == 0
    assert messages == [rfb.ExtendedClipboard(Clipboard.PROVIDE, 1, text="0123456789")]


def test_writers_give_the_wire_bytes():
    assert rfb.server_clipboard(rfb.clipboard_caps(clipboard.ACTIONS, 256)) == extended(
        3, CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | 1, struct.pack(">I", 256))
    assert rfb.server_clipboard(rfb.clipboard_action(Clipboard.NOTIFY)) == extended(3, NOTIFY | 1)
    assert rfbclient.client_clipboard(rfb.clipboard_action(Clipboard.REQUEST)) == extended(
        6, REQUEST | 1)
    written = rfbclient.client_clipboard(rfb.clipboard_provide("a\nß"))
    (flags,) = struct.unpack(">I", written[8:12])
    assert written[:8] == struct.pack(">B3xi", 6, -(len(written) - 8))
    assert flags == PROVIDE | 1
    assert zlib.decompress(written[12:]) == struct.pack(">I", 6) + "a\r\nß".encode() + b"\0"


# --- Each side's link ----------------------------------------------------------------------


def test_a_plain_viewer_gets_latin1_with_question_marks():
    link = clipboard.viewer_link()
    assert link.give("café ☃\n") == rfb.server_cut_text("café ?\n".encode("latin-1"))
    link.receive_plain(b"caf\xe9\r\nx")
    assert link.received == "café\nx"


def test_an_extended_viewer_gets_utf8_or_a_notify_when_too_big():
    link = clipboard.viewer_link()
    assert link.offer() == extended(3, CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | 1,
                                    struct.pack(">I", rfb.CUT_TEXT_LIMIT))
    assert link.give("☃") == extended(3, NOTIFY | 1), "no caps yet: notify, let it ask"
    caps = rfb.ExtendedClipboard(Clipboard.CAPS | Clipboard.PROVIDE, 1, (100,))
    assert link.receive(caps) == (b"", False)
    assert link.give("☃") == rfb.server_clipboard(rfb.clipboard_provide("☃"))
    assert link.give("x" * 100) == extended(3, NOTIFY | 1)
    request = rfb.ExtendedClipboard(Clipboard.REQUEST, 1)
    assert link.receive(request) == (rfb.server_clipboard(rfb.clipboard_provide("x" * 100)), False)


def test_the_link_answers_peek_and_notify_and_keeps_provided_text():
    link = clipboard.viewer_link()
    link.offer()
    assert link.receive(rfb.ExtendedClipboard(Clipboard.PEEK, 0)) == (extended(3, NOTIFY), False)
    assert link.receive(rfb.ExtendedClipboard(Clipboard.NOTIFY, 1)) == (
        extended(3, REQUEST | 1), False)
    assert link.receive(rfb.ExtendedClipboard(Clipboard.PROVIDE, 1, text="a\r\nb")) == (b"", True)
    assert link.received == "a\nb"


def test_the_guest_link_answers_the_servers_caps_with_its_own():
    link = clipboard.ClipboardLink(rfbclient.client_cut_text, rfbclient.client_clipboard)
    caps = rfb.ExtendedClipboard(Clipboard.CAPS | Clipboard.PROVIDE, 1, (10 ** 6,))
    answer, _ = link.receive(caps)
    assert answer == extended(6, CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | 1,
                              struct.pack(">I", rfb.CUT_TEXT_LIMIT))
    assert link.receive(caps) == (b"", False)
    assert link.give("ü") == rfbclient.client_clipboard(rfb.clipboard_provide("ü"))


# --- Paste ---------------------------------------------------------------------------------


def new_console():
    return console.Console(sources.PtySource("/dev/null"), 20, 5)


def test_paste_is_utf8_with_return_for_line_ends():
    term = new_console()
    term.paste("ls ☃\nrm\r\n")
    assert term._outbox == "ls ☃\rrm\r".encode()


def test_bracketed_paste_when_the_program_asked_for_it():
    term = new_console()
    term.feed(b"\x1b[?2004h")
    term.paste("a\n\x1b[201~b")
    assert term._outbox == b"\x1b[200~a\rb\x1b[201~"
    term._outbox.clear()
    term.feed(b"\x1b[?2004l")
    term.paste("c")
    assert term._outbox == b"c"


@pytest.mark.parametrize("keysyms,on_console,expected", [
    ({0xFFE3, 0xFFE9}, False, {ord("v"), ord("V")}),
    ({0xFFE3, 0xFFE9}, True, {ord("v"), ord("V")}),
    ({0xFFE1}, True, {0xFF63, 0xFF9E}),
    ({0xFFE1}, False, set()),
    ({0xFFE3}, True, set()),
])
def test_paste_keys(keysyms, on_console, expected):
    candidates = {ord("v"), ord("V"), 0xFF63, 0xFF9E, ord("x")}
    assert {k for k in candidates if vt.pastes(k, keysyms, on_console)} == expected


# --- The selection -------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def texts(*lines):
    return lambda line: list(lines[line].ljust(12))


def test_a_drag_selects_characters_and_drops_trailing_blanks():
    chosen = selection.Selection(Clock())
    chosen.press((0, 3))
    chosen.drag((1, 3))
    chosen.release()
    assert chosen.text(texts("ab cd   ", "efgh xy")) == "cd\nefgh"


def test_a_click_selects_nothing():
    chosen = selection.Selection(Clock())
    chosen.press((0, 2))
    chosen.release()
    assert chosen.text(texts("abc")) == ""


def test_double_click_selects_a_word_and_triple_a_line():
    clock = Clock()
    chosen = selection.Selection(clock)
    line = texts("  foo_bar2 baz  ")
    chosen.press((0, 4))
    chosen.release()
    clock.now += 0.1
    chosen.press((0, 4))
    chosen.release()
    assert chosen.text(line) == "foo_bar2"
    clock.now += 0.1
    chosen.press((0, 4))
    assert chosen.text(line) == "  foo_bar2 baz"
    clock.now += 1
    chosen.press((0, 4))
    assert chosen.unit == selection.CHARACTERS


def test_a_wide_character_is_copied_once():
    term = new_console()
    term.feed("a漢b".encode())
    term.select(0, 0, press=True)
    term.select(0, 19, press=False)
    assert term.end_selection() == "a漢b"


def console_display(term):
    return display.ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))


def drag(shown, hand, start, end):
    """Left-drag from cell `start` to cell `end` (column, row) on a console display."""
    width, height = shown.glyphs.cell
    for mask, (column, row) in ((1, start), (1, end), (0, end)):
        shown.pointer(mask, column * width, row * height, hand)
        hand.buttons = mask


def test_selecting_copies_to_that_viewers_clipboard_and_highlights():
    term = new_console()
    term.feed("one\r\ntwo ünï\r\n".encode())
    shown = console_display(term)
    hand = clipboard.Hand(keymap.Modifiers(), clipboard.viewer_link())
    drag(shown, hand, (1, 0), (5, 1))
    assert hand.clipboard.take() == rfb.server_cut_text("ne\ntwo ün".encode("latin-1"))
    frame = term.take_frame()
    assert [cell.reverse for cell in frame.rows[0]] == [False] + [True] * 19
    assert [cell.reverse for cell in frame.rows[1]] == [True] * 6 + [False] * 14


def test_the_selection_stays_on_its_text_as_output_scrolls():
    term = new_console()
    term.feed(b"first\r\n")
    term.take_frame()
    term.select(0, 0, press=True)
    term.select(0, 4, press=False)
    term.feed(b"1\r\n2\r\n3\r\n4\r\n5\r\n")
    assert term.end_selection() == "first"


def test_selection_works_in_the_scrollback():
    term = new_console()
    term.feed(b"old\r\n" + b"x\r\n" * 10)
    term.take_frame()
    term.scroll_view(len(term.terminal.history))
    term.take_frame()
    term.select(0, 0, press=True)
    term.select(0, 2, press=False)
    assert term.end_selection() == "old"


def test_middle_click_pastes_and_mouse_reporting_needs_shift():
    term = new_console()
    shown = console_display(term)
    hand = clipboard.Hand(keymap.Modifiers(), clipboard.viewer_link())
    hand.clipboard.receive_plain(b"echo hi\n")
    term.feed(b"\x1b[?1000;1006h")
    for mask in (2, 0):
        shown.pointer(mask, 0, 0, hand)
        hand.buttons = mask
    assert term._outbox == b"\x1b[<1;1;1M\x1b[<1;1;1m", "the program's click, not a paste"
    term._outbox.clear()
    hand.modifiers.update(0xFFE1, True)
    shown.pointer(2, 0, 0, hand)
    assert term._outbox == b"echo hi\r"


# --- Typing into the guest -----------------------------------------------------------------


def test_typed_keys_follow_a_us_keyboard():
    shift = keymap.SHIFT_L
    assert keymap.typed_keys("a") == [(ord("a"), True), (ord("a"), False)]
    assert keymap.typed_keys("A") == [(shift, True), (ord("A"), True), (ord("A"), False),
                                      (shift, False)]
    assert keymap.typed_keys("?")[0] == (shift, True)
    assert keymap.typed_keys("\n") == [(0xFF0D, True), (0xFF0D, False)]
    assert keymap.typed_keys("\t") == [(0xFF09, True), (0xFF09, False)]
    assert keymap.typed_keys("é") == [(0xE9, True), (0xE9, False)]
    assert keymap.typed_keys("☃") == [(0x0100_2603, True), (0x0100_2603, False)]
    assert keymap.typed_keys("\x07") == []


def test_typing_is_paced_capped_and_stoppable():
    clock = Clock()
    typing = vncproxy.Typing(clock)
    owner, other = keymap.Modifiers(), keymap.Modifiers()
    typing.start("ab" * vncproxy.TYPING_LIMIT, owner)
    first = typing.due(clock.now)
    assert first == rfbclient.key_event(True, ord("a")) + rfbclient.key_event(False, ord("a"))
    assert typing.wait(clock.now) == pytest.approx(vncproxy.TYPING_INTERVAL)
    assert typing.due(clock.now) == b""
    typed = b""
    for _ in range(10):
        clock.now += vncproxy.TYPING_INTERVAL
        typed += typing.due(clock.now)
    assert len(typed) == 10 * len(first)
    clock.now += 60
    assert len(typing.due(clock.now)) <= 2 * len(first), "a stall is no reason for a burst"
    typing.stop(other)
    assert typing.wait(clock.now) is not None, "another viewer's key does not stop it"
    typing.stop(owner)
    assert typing.wait(clock.now) is None
    typing.start("x" * (vncproxy.TYPING_LIMIT + 10), owner)
    typed = 0
    while typing.wait(clock.now) is not None:
        clock.now += typing.wait(clock.now)
        typed += len(typing.due(clock.now)) // len(first)
    assert typed == vncproxy.TYPING_LIMIT


# --- A viewer session, over a socket ----------------------------------------------------------

EXTENDED_CLIPBOARD = -0x3F5E1A32  # 0xC0A1E5CE
CONTROL_L, ALT_L = 0xFFE3, 0xFFE9
ALL_ACTIONS = CAPS | REQUEST | PEEK | NOTIFY | PROVIDE


def ctrl_alt_v(client):
    for keysym, down in ((CONTROL_L, True), (ALT_L, True), (ord("v"), True),
                         (ord("v"), False), (ALT_L, False), (CONTROL_L, False)):
        client.key(keysym, down)


def read_extended(client):
    """The next server message, which must be an Extended Clipboard one: (flags, data)."""
    kind, length = struct.unpack(">B3xI", client.recv(8))
    assert kind == 3 and length >= 0x80000000
    body = client.recv(0x100000000 - length)
    return struct.unpack(">I", body[:4])[0], body[4:]


def test_an_extended_viewer_pastes_utf8_on_request_and_copies_utf8(harness):
    h = harness()
    client = h.connect()
    client.set_encodings(0, EXTENDED_CLIPBOARD)
    assert read_extended(client) == (ALL_ACTIONS | 1, struct.pack(">I", rfb.CUT_TEXT_LIMIT))
    client.send(extended(6, CAPS | PROVIDE | 1, struct.pack(">I", 10000)))
    client.send(provided("päste ☃\r\n".encode() + b"\0"))
    assert h.guest_reads(1, timeout=0.5) == b"", "a copy on the viewer's machine is not typed"
    ctrl_alt_v(client)
    assert h.guest_reads(len("päste ☃\r".encode())) == "päste ☃\r".encode()
    h.guest_writes("wörld ☃ x  \r\n".encode(), shows="x")
    width, height = h.cell_width(), h.cell_height()
    for mask, column in ((1, 0), (1, 12), (0, 12)):
        client.send(struct.pack(">BBHH", 5, mask, column * width, height // 2))
    flags, data = read_extended(client)
    assert flags == PROVIDE | 1
    text = "wörld ☃ x".encode() + b"\0"
    assert zlib.decompress(data) == struct.pack(">I", len(text)) + text


def test_a_plain_viewer_gets_latin1_and_pastes_with_the_middle_button(harness):
    h = harness()
    client = h.connect()
    client.send(struct.pack(">B3xI", 6, 6) + b"caf\xe9\n!")
    h.guest_writes("ok ☃\r\n".encode(), shows="ok")
    width, height = h.cell_width(), h.cell_height()
    for mask, column in ((1, 0), (1, 3), (0, 3), (2, 0), (0, 0)):
        client.send(struct.pack(">BBHH", 5, mask, column * width, height // 2))
    kind, length = struct.unpack(">B3xI", client.recv(8))
    assert (kind, client.recv(length)) == (3, b"ok ?")
    assert h.guest_reads(len("café\r!".encode())) == "café\r!".encode()


def test_a_wrapped_line_is_copied_joined_to_its_continuation():
    term = new_console()
    term.feed(b"0123456789 123456789 wrapped\r\nnext\r\n")
    term.select(0, 0, press=True)
    term.select(2, 3, press=False)
    assert term.end_selection() == "0123456789 123456789 wrapped\nnext"


def test_a_wrap_mark_goes_with_a_line_feed_or_an_erase():
    term = new_console()
    term.feed(("\x1b[31m漢" * 12 + "\r\n").encode())  # pyte's own draw wraps it
    assert [term._wrapped(line) for line in range(3)] == [True, False, False]
    term.feed(b"\x1b[H\x1b[2Jxxxxx\x1b[2;1Hy")
    term.select(0, 0, press=True)
    term.select(1, 0, press=False)
    assert term.end_selection() == "xxxxx\ny"


def test_lines_wrapped_in_a_flood_keep_their_mark():
    term = new_console()
    term.feed(b"\r\n" * 10 + (b"a" * 25 + b"\r\n") * 10)
    term.take_frame()
    history = term.terminal.history
    assert [getattr(row, "wrapped", False) for row in list(history)[-4:]] == [
        True, False, True, False]


def test_shift_drag_selects_while_the_program_has_the_mouse():
    term = new_console()
    term.feed(b"pick me\r\n\x1b[?1002;1006h")
    shown = console_display(term)
    hand = clipboard.Hand(keymap.Modifiers(), clipboard.viewer_link())
    drag(shown, hand, (0, 0), (6, 0))
    assert hand.clipboard.take() == b"", "the program's drag, not a selection"
    assert term._outbox.startswith(b"\x1b[<0;1;1M")
    hand.modifiers.update(0xFFE1, True)
    term._outbox.clear()
    drag(shown, hand, (0, 0), (6, 0))
    assert hand.clipboard.take() == rfb.server_cut_text(b"pick me")
    assert term._outbox == b"", "Shift is never reported"
