"""vncproxy.py and rfbclient.py: the VT-switch table, the guest stream reader, and the proxy
against a scripted guest (well-behaved and hostile) with our raw test viewer.

The real guests (TigerVNC Xvnc, x11vnc) and real viewers are in test_proxy_viewers.py; here we
reach the corners they never visit: every state/event pair, rectangles outside the
framebuffer, truncated and stalled streams, keys held across a switch.
"""

import select
import socket
import struct

import pytest

import rfb
import rfbclient
import vncproxy
import vt
from fakeguest import COPY_RECT, CURSOR, DESKTOP_SIZE, RAW
from harness import Proxy, console_reads, follow, leak_checked, shows
from peers import wait_until as wait_for
from rawviewer import RAW as VIEWER_RAW
from vt import CONSOLE, DESKTOP, DESKTOP_DOWN, DESKTOP_UP, NO_DESKTOP, TO_CONSOLE, TO_DESKTOP

CONTROL_L, ALT_L, F1, F7 = 0xFFE3, 0xFFE9, 0xFFBE, 0xFFC4
SHIFT_L, INSERT = 0xFFE1, 0xFF63

# The story from the issue, one line per step: (state, event, expected state).
STORY = [
    (NO_DESKTOP, DESKTOP_UP, DESKTOP),  # the guest's X starts: everyone switches
    (DESKTOP, TO_CONSOLE, CONSOLE),  # Ctrl-Alt-F1
    (CONSOLE, TO_DESKTOP, DESKTOP),  # Ctrl-Alt-F7
    (DESKTOP, DESKTOP_DOWN, NO_DESKTOP),  # X goes away: back to the console
    (NO_DESKTOP, TO_DESKTOP, NO_DESKTOP),  # nothing to switch to
    (CONSOLE, DESKTOP_DOWN, NO_DESKTOP),
    (CONSOLE, DESKTOP_UP, DESKTOP),  # a new desktop arrives: switch again
    (DESKTOP, DESKTOP_UP, DESKTOP),  # a replacement desktop
    (NO_DESKTOP, TO_CONSOLE, NO_DESKTOP),
]


@pytest.mark.parametrize("state,event,expected", STORY)
def test_story(state, event, expected):
    assert vt.transition(state, event) == expected


def test_table_is_total():
    states = {NO_DESKTOP, CONSOLE, DESKTOP}
    events = {DESKTOP_UP, DESKTOP_DOWN, TO_CONSOLE, TO_DESKTOP}
    assert set(vt.TRANSITIONS) == {(s, e) for s in states for e in events}
    assert set(vt.TRANSITIONS.values()) <= states
    with pytest.raises(ValueError):
        vt.transition("nowhere", DESKTOP_UP)


@pytest.mark.parametrize("held,keysym,expected", [
    ({CONTROL_L, ALT_L}, F1, TO_CONSOLE),
    ({CONTROL_L, ALT_L}, F1 + 5, TO_CONSOLE),
    ({CONTROL_L, ALT_L}, F7, TO_DESKTOP),
    ({CONTROL_L, ALT_L}, ord("1"), TO_CONSOLE),
    ({CONTROL_L, ALT_L}, ord("7"), TO_DESKTOP),
    ({CONTROL_L, ALT_L}, F1 + 7, None),
    ({CONTROL_L}, F1, None),
    ({ALT_L}, F7, None),
    (set(), ord("7"), None),
])
def test_hotkeys(held, keysym, expected):
    assert vt.hotkey(keysym, held) == expected


# --- The guest stream reader ----------------------------------------------------------------


def rect(x, y, w, h, encoding, payload=b""):
    return struct.pack(">HHHHi", x, y, w, h, encoding) + payload


def update(*rects):
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


GOOD_STREAM = (
    update(rect(0, 0, 2, 2, RAW, b"\x01\x02\x03\x00" * 4),
           rect(1, 1, 1, 1, COPY_RECT, struct.pack(">HH", 0, 0)))
    + b"\x02"
    + struct.pack(">B3xI", 3, 5) + b"hello"
    + update(rect(0, 0, 8, 6, DESKTOP_SIZE))
    + update(rect(1, 1, 2, 2, CURSOR, b"\xff\x00\x00\x00" * 4 + b"\xc0\x40"))
)
GOOD_EVENTS = [
    rfbclient.RawRows(0, 0, 2, b"\x01\x02\x03\x00" * 4),
    rfbclient.CopyRect(1, 1, 1, 1, 0, 0),
    rfbclient.UpdateEnd(),
    rfbclient.Bell(),
    rfbclient.ServerCutText(b"hello"),
    rfbclient.DesktopResize(8, 6),
    rfbclient.UpdateEnd(),
    rfbclient.CursorShape(1, 1, 2, 2, b"\xff\x00\x00\x00" * 4, b"\xc0\x40"),
    rfbclient.UpdateEnd(),
]


def read_events(reader):
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def merge_rows(events):
    """Raw rows may come in several pieces; join neighbours so streams compare."""
    merged = []
    for event in events:
        previous = merged[-1] if merged else None
        if (isinstance(event, rfbclient.RawRows) and isinstance(previous, rfbclient.RawRows)
                and previous.x == event.x and previous.width == event.width):
            merged[-1] = rfbclient.RawRows(previous.x, previous.y, previous.width,
                                           previous.data + event.data)
        else:
            merged.append(event)
    return merged


def test_reader_whole():
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(GOOD_STREAM)
    assert read_events(reader) == GOOD_EVENTS
    assert not reader.mid_message


def test_reader_byte_by_byte():
    reader = rfbclient.ServerReader(4, 4)
    events = []
    for i in range(len(GOOD_STREAM)):
        reader.feed(GOOD_STREAM[i : i + 1])
        events += read_events(reader)
    assert merge_rows(events) == GOOD_EVENTS


def test_reader_leaves_trailing_bytes():
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(GOOD_STREAM + b"\x00\x00")
    assert read_events(reader) == GOOD_EVENTS
    assert reader.mid_message
    reader.feed(b"\x00\x00")
    assert read_events(reader) == [rfbclient.UpdateEnd()]


def test_cut_text_is_capped():
    reader = rfbclient.ServerReader(4, 4)
    size = rfb.CUT_TEXT_LIMIT + 1000
    reader.feed(struct.pack(">B3xI", 3, size) + b"z" * size)
    assert read_events(reader) == [rfbclient.ServerCutText(b"z" * rfb.CUT_TEXT_LIMIT)]


HOSTILE_STREAMS = [
    pytest.param(update(rect(3, 3, 2, 2, RAW)), "outside", id="raw-outside"),
    pytest.param(update(rect(0, 65535, 1, 2, RAW)), "outside", id="raw-u16-wrap"),
    pytest.param(update(rect(0, 0, 2, 2, COPY_RECT, struct.pack(">HH", 3, 3))), "outside",
                 id="copyrect-source-outside"),
    pytest.param(update(rect(0, 0, 1, 1, 5)), "not requested", id="hextile-unasked"),
    pytest.param(update(rect(0, 0, 1, 1, -1)), "not requested", id="unknown-encoding"),
    pytest.param(update(rect(0, 0, 9000, 10, DESKTOP_SIZE)), "out of range", id="wide-desktop"),
    pytest.param(update(rect(0, 0, 8000, 8000, DESKTOP_SIZE)), "too large", id="huge-desktop"),
    pytest.param(update(rect(0, 0, 0, 10, DESKTOP_SIZE)), "out of range", id="empty-desktop"),
    pytest.param(update(rect(0, 0, 300, 300, CURSOR)), "cursor", id="huge-cursor"),
    pytest.param(update(rect(0, 0, 4, 4, -308, b"\x00\x00\x00\x00")), "no screens",
                 id="eds-no-screens"),
    pytest.param(b"\x01\x00\x00\x00\x00\x01", "message type 1", id="colour-map"),
    pytest.param(b"\x96", "message type 150", id="unknown-message"),
]


@pytest.mark.parametrize("stream,reason", HOSTILE_STREAMS)
def test_hostile_streams_are_refused(stream, reason):
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(stream)
    with pytest.raises(rfb.ProtocolError, match=reason):
        read_events(reader)


@pytest.mark.parametrize("offered,version", [
    (b"RFB 003.003\n", (3, 3)), (b"RFB 003.006\n", (3, 3)), (b"RFB 003.007\n", (3, 7)),
    (b"RFB 003.008\n", (3, 8)), (b"RFB 003.889\n", (3, 8)), (b"RFB 004.001\n", (3, 8)),
    (b"RFB 005.000\n", (3, 8)),
])
def test_server_versions(offered, version):
    assert rfbclient.parse_server_version(offered) == version


@pytest.mark.parametrize("offered", [b"RFB 003.002\n", b"RFB 002.000\n", b"SSH-2.0-x\r\n\0"])
def test_bad_server_versions(offered):
    with pytest.raises(rfb.ProtocolError):
        rfbclient.parse_server_version(offered)


def test_vnc_authentication_reverses_key_bits():
    from Crypto.Cipher import DES

    challenge = bytes(range(16))
    # "pass" padded with NULs, each byte bit-reversed by hand: p=0x70 -> 0x0E, a=0x61 -> 0x86,
    # s=0x73 -> 0xCE.
    key = bytes([0x0E, 0x86, 0xCE, 0xCE, 0, 0, 0, 0])
    expected = DES.new(key, DES.MODE_ECB).encrypt(challenge)
    assert rfb.vnc_auth_response(challenge, b"pass") == expected


# --- The proxy against a scripted guest, seen by a raw viewer -------------------------------


@pytest.fixture
def proxy():
    yield from leak_checked(Proxy)


def test_viewer_switches_to_the_guest_desktop_and_back(proxy):
    p = proxy()
    client = p.viewer()
    client.request(incremental=False)
    client.read_update()
    console_size = (client.width, client.height)
    guest = p.guest(width=320, height=200, colour=(0, 200, 0))
    guest.paint()
    assert follow(client, lambda c: (c.width, c.height) == (320, 200) and shows((0, 200, 0))(c))
    client.key(CONTROL_L)
    client.key(ALT_L)
    client.key(F1)
    assert follow(client, lambda c: (c.width, c.height) == console_size)
    client.key(F7)
    assert follow(client, lambda c: (c.width, c.height) == (320, 200) and shows((0, 200, 0))(c))
    guest.close()
    assert follow(client, lambda c: (c.width, c.height) == console_size)


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.889\n"])
def test_guest_protocol_versions(proxy, version):
    p = proxy()
    guest = p.guest(version=version)
    assert guest.shared == 1
    guest.paint()
    client = p.viewer()
    client.request(incremental=False)
    assert follow(client, shows(guest.colour))


def guest_and_viewer(p):
    """A painted guest desktop and a viewer that has asked for everything."""
    guest = p.guest()
    guest.paint()
    client = p.viewer()
    client.request(incremental=False)
    return guest, client


def test_keys_go_to_the_guest_and_none_stay_stuck(proxy):
    p = proxy()
    guest, client = guest_and_viewer(p)
    client.read_update()
    client.key(ord("a"))
    client.key(CONTROL_L)
    client.key(ALT_L)
    client.key(F1)
    for keysym in (F1, ALT_L, CONTROL_L, ord("a")):
        client.key(keysym, down=False)
    client.key(ord("b"))
    client.key(ord("b"), down=False)
    assert console_reads(p.master) == b"b"
    assert wait_for(lambda: len(guest.key_events()) >= 6)
    events = guest.key_events()
    assert events[0] == (True, ord("a"))
    assert set(events[1:]) == {(True, CONTROL_L), (True, ALT_L), (False, ord("a")),
                               (False, CONTROL_L), (False, ALT_L)}
    assert not any(keysym == F1 for _, keysym in events)
    assert (True, ord("b")) not in events


def test_clipboard_goes_to_the_display_the_viewer_is_on(proxy):
    p = proxy()
    guest, client = guest_and_viewer(p)
    assert follow(client, lambda c: (c.width, c.height) == (guest.width, guest.height))
    client.send(struct.pack(">BxxxI", 6, 14) + b"to the desktop")
    assert wait_for(lambda: guest.cut_texts() == [b"to the desktop"])
    for keysym in (CONTROL_L, ALT_L, F1):
        client.key(keysym)
    for keysym in (F1, ALT_L, CONTROL_L):
        client.key(keysym, down=False)
    assert follow(client, lambda c: (c.width, c.height) != (guest.width, guest.height))
    client.send(struct.pack(">BxxxI", 6, 14) + b"to the console")
    assert console_reads(p.master, timeout=0.5) == b"", "a copy is kept, not typed"
    for keysym, down in ((SHIFT_L, True), (INSERT, True), (INSERT, False), (SHIFT_L, False)):
        client.key(keysym, down)
    assert console_reads(p.master) == b"to the console"
    assert guest.cut_texts() == [b"to the desktop"]


def test_viewer_that_cannot_resize_stays_on_the_console(proxy):
    p = proxy()
    client = p.viewer(VIEWER_RAW)
    client.request(incremental=False)
    client.read_update()
    size = (client.width, client.height)
    guest = p.guest()
    guest.paint()
    assert wait_for(lambda: "guest desktop up" in p.console.notice)
    client.request(incremental=True)
    client.read_update()
    assert (client.width, client.height) == size
    assert not shows(guest.colour)(client)


def test_viewer_connecting_while_the_desktop_is_up_starts_there(proxy):
    p = proxy()
    guest = p.guest(width=200, height=100, colour=(10, 20, 230))
    guest.paint()
    assert wait_for(lambda: p.server.desktop is not None)
    client = p.viewer()
    assert (client.width, client.height) == (200, 100)
    client.request(incremental=False)
    assert follow(client, shows((10, 20, 230)))


def test_second_guest_replaces_the_first(proxy):
    p = proxy()
    first = p.guest(colour=(200, 0, 0))
    first.paint()
    client = p.viewer()
    client.request(incremental=False)
    assert follow(client, shows((200, 0, 0)))
    second = p.guest(colour=(0, 0, 200))
    second.paint()
    assert follow(client, shows((0, 0, 200)))
    assert first.sock.recv(100) == b""


def test_guest_connections_beyond_the_cap_are_closed_at_once(proxy):
    """Connections that never finish a handshake hold a thread each, so only a few may be open;
    a real guest gets in as soon as one of them goes."""
    p = proxy()
    address = ("127.0.0.1", p.reverse_port)
    silent = [socket.create_connection(address) for _ in range(vncproxy.MAX_GUEST_CONNECTIONS)]
    p.closers += [each.close for each in silent]
    extra = socket.create_connection(address)
    extra.settimeout(5)
    assert extra.recv(1) == b""
    extra.close()
    silent.pop().close()
    assert wait_for(lambda: len(p.desktops._upstreams) < vncproxy.MAX_GUEST_CONNECTIONS)
    p.guest().paint()
    assert wait_for(lambda: p.server.desktop is not None)


def test_a_guest_trickling_its_handshake_is_dropped_at_the_deadline(proxy, monkeypatch):
    """One deadline for the whole handshake, not one per read: a byte every 0.2 s is not enough."""
    monkeypatch.setattr(vncproxy, "HANDSHAKE_TIMEOUT", 1.0)
    p = proxy()
    guest = socket.create_connection(("127.0.0.1", p.reverse_port))
    p.closers.append(guest.close)
    closed = False
    for byte in b"RFB 003.008\n" * 2:
        if select.select([guest], [], [], 0.2)[0]:
            closed = guest.recv(100) == b""
            break
        guest.sendall(bytes([byte]))
    assert closed


HOSTILE_UPDATES = [
    pytest.param(lambda g: g.send_update(g.rect(300, 0, 100, 10, RAW)), id="rect-outside"),
    pytest.param(lambda g: g.send_update(g.rect(0, 0, 10, 10, 16)), id="unrequested-zrle"),
    pytest.param(lambda g: g.send_update(g.rect(0, 0, 60000, 60000, DESKTOP_SIZE)),
                 id="huge-resize"),
    pytest.param(lambda g: g.sock.sendall(b"\x07"), id="unknown-message"),
    pytest.param(lambda g: g.close(), id="hangup"),
]


@pytest.mark.parametrize("attack", HOSTILE_UPDATES)
def test_hostile_guest_is_dropped_and_viewers_return(proxy, attack):
    p = proxy()
    client = p.viewer()
    client.request(incremental=False)
    client.read_update()
    console_size = (client.width, client.height)
    guest = p.guest()
    guest.paint()
    assert follow(client, lambda c: (c.width, c.height) == (guest.width, guest.height))
    attack(guest)
    assert follow(client, lambda c: (c.width, c.height) == console_size)
    assert p.server.desktop is None


def test_stalled_guest_is_dropped(proxy, monkeypatch):
    monkeypatch.setattr(vncproxy, "STALL_TIMEOUT", 0.5)
    p = proxy()
    guest = p.guest()
    guest.paint()
    assert wait_for(lambda: p.server.desktop is not None)
    guest.sock.sendall(struct.pack(">BxH", 0, 1) + guest.rect(0, 0, 10, 10, RAW) + b"\0" * 7)
    assert wait_for(lambda: p.server.desktop is None, timeout=10)


def test_guest_asking_for_a_password_is_refused_without_one(proxy):
    p = proxy()
    sock = socket.create_connection(("127.0.0.1", p.reverse_port), timeout=5)
    sock.sendall(b"RFB 003.008\n")
    assert sock.recv(12) == b"RFB 003.008\n"
    sock.sendall(b"\x01\x02")
    assert sock.recv(10) == b""
    sock.close()
    assert p.server.desktop is None


def test_guest_memory_stays_bounded_under_a_raw_flood(proxy):
    p = proxy()
    guest = p.guest(width=640, height=480)
    for shade in range(0, 250, 10):
        guest.paint((shade, shade, shade))
    client = p.viewer()
    client.request(incremental=False)
    assert follow(client, shows((240, 240, 240)))
    assert p.server.desktop.image.size == (640, 480)


def test_bells_and_clipboard_from_the_guest_reach_viewers_on_the_desktop(proxy):
    p = proxy()
    guest = p.guest()
    guest.paint()
    client = p.viewer()
    client.request(incremental=False)
    assert follow(client, shows(guest.colour))
    guest.sock.sendall(b"\x02" + struct.pack(">B3xI", 3, 4) + b"clip")
    guest.paint()
    assert follow(client, lambda c: c.bells == 1 and c.cut_texts == [b"clip"])


def test_hundreds_of_empty_rectangles_keep_the_guest(proxy):
    """Issue 12 item 2: 400 zero-size rectangles in one update are legal, not an internal error."""
    p = proxy()
    guest, client = guest_and_viewer(p)
    assert follow(client, shows(guest.colour))
    guest.send_update(*[guest.rect(0, 0, 0, 0, RAW)] * 400,
                      guest.raw(0, 0, guest.width, guest.height, (200, 0, 200)))
    assert follow(client, shows((200, 0, 200)))
    assert p.server.desktop is not None
