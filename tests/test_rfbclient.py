"""rfbclient.py's readers: the guest's handshake step by step, and the update reader on the
corners real guests reach (long runs of empty rectangles, cursors whose hotspot lies just
outside the image).

Each handshake step is read whole, one byte at a time, by a caller that feeds exactly the
`needed` bytes, and followed by trailing bytes that must stay for the next step.  The wire
bytes are written by hand from RFC 6143 with `struct`, not produced by rfbclient.py.
"""

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rfb
import rfbclient

RAW, CURSOR = 0, -239


def rect(x, y, width, height, encoding, payload=b""):
    return struct.pack(">HHHHi", x, y, width, height, encoding) + payload


def update(*rects):
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def read_events(reader):
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def test_many_empty_rectangles_in_one_update_are_read_without_recursion():
    """Issue 12 item 2: 400 zero-size rectangles are legal and must not exhaust the stack."""
    reader = rfbclient.ServerReader(4, 4)
    empties = [rect(0, 0, 0, 0, RAW)] * 5000
    reader.feed(update(*empties, rect(0, 0, 1, 1, RAW, b"\x01\x02\x03\x00")))
    assert read_events(reader) == [rfbclient.RawRows(0, 0, 1, b"\x01\x02\x03\x00"),
                                   rfbclient.UpdateEnd()]
    assert not reader.mid_message


def test_an_update_of_empty_rectangles_only_ends_once():
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(update(*[rect(1, 1, 0, 3, RAW)] * 1000) + b"\x02")
    assert read_events(reader) == [rfbclient.UpdateEnd(), rfbclient.Bell()]


def test_empty_rectangles_byte_by_byte():
    reader = rfbclient.ServerReader(4, 4)
    stream = update(*[rect(0, 0, 0, 0, RAW)] * 300)
    events = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        events += read_events(reader)
    assert events == [rfbclient.UpdateEnd()]


# TightVNC 1.3's Xtightvnc hides the pointer with a 1x2 cursor whose hotspot is (0,2).
TIGHTVNC_HIDDEN_CURSOR = rect(0, 2, 1, 2, CURSOR, b"\0" * 8 + b"\0\0")


def test_a_hotspot_just_outside_the_cursor_is_clamped_into_it():
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(update(TIGHTVNC_HIDDEN_CURSOR))
    assert read_events(reader) == [rfbclient.CursorShape(0, 1, 1, 2, b"\0" * 8, b"\0\0"),
                                   rfbclient.UpdateEnd()]


def test_a_hotspot_far_outside_the_cursor_is_clamped_into_it():
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(update(rect(65535, 300, 2, 2, CURSOR, b"\xff" * 16 + b"\xc0\xc0")))
    assert read_events(reader)[0] == rfbclient.CursorShape(1, 1, 2, 2, b"\xff" * 16,
                                                           b"\xc0\xc0")


def test_clamped_cursor_byte_by_byte_and_with_trailing_data():
    reader = rfbclient.ServerReader(4, 4)
    stream = update(TIGHTVNC_HIDDEN_CURSOR) + b"\x02\x00"
    events = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        events += read_events(reader)
    assert events == [rfbclient.CursorShape(0, 1, 1, 2, b"\0" * 8, b"\0\0"),
                      rfbclient.UpdateEnd(), rfbclient.Bell()]
    assert reader.mid_message


# QEMU's input pseudo-rectangles, as QEMU 7.2 sends them: each in an update of its own.
QEMU_INPUT = [
    (update(rect(0, 0, 0, 0, -258)), rfbclient.ExtendedKeysAccepted()),
    (update(rect(0, 0, 0, 0, -261, b"\x04")), rfbclient.LedState(4)),
    (update(rect(0, 0, 0, 0, -261, b"\xff")), rfbclient.LedState(7)),
    (update(rect(1, 0, 720, 400, -257)), rfbclient.PointerTypeChange(True)),
    (update(rect(0, 0, 640, 480, -257)), rfbclient.PointerTypeChange(False)),
]


@pytest.mark.parametrize("data,expected", QEMU_INPUT)
def test_qemu_input_rectangles_whole(data, expected):
    reader = rfbclient.ServerReader(4, 4)
    reader.feed(data)
    assert read_events(reader) == [expected, rfbclient.UpdateEnd()]
    assert not reader.mid_message


@pytest.mark.parametrize("data,expected", QEMU_INPUT)
def test_qemu_input_rectangles_byte_by_byte_and_with_trailing_data(data, expected):
    reader = rfbclient.ServerReader(4, 4)
    stream = data + b"\x02\x00"
    events = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        events += read_events(reader)
        if i < len(data) - 1:
            assert events == []
    assert events == [expected, rfbclient.UpdateEnd(), rfbclient.Bell()]
    assert reader.mid_message


def test_qemu_input_encodings_are_asked_for_and_keys_sent_as_scancodes():
    assert {-257, -258, -261} <= set(rfbclient.ServerReader.ENCODINGS)
    assert rfbclient.qemu_extended_key_event(True, 0x71, 0x10) == struct.pack(
        ">BBHII", 255, 0, 1, 0x71, 0x10)


# --- HandshakeReader: the server's side of the handshake, step by step ----------------------

LE_888 = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
CHALLENGE = bytes(range(16))
V33, V37, V38 = (3, 3), (3, 7), (3, 8)

# (step name, its arguments, the server's bytes, what the step returns)
STEPS = [
    ("version", (), b"RFB 003.008\n", V38),
    ("version", (), b"RFB 003.003\n", V33),
    ("version", (), b"RFB 003.889\n", V38),
    ("security_types", (V38,), b"\x02\x01\x02", [1, 2]),
    ("security_types", (V37,), b"\x01\x02", [2]),
    ("security_types", (V33,), b"\x00\x00\x00\x02", [2]),
    ("challenge", (), CHALLENGE, CHALLENGE),
    ("security_result", (V38,), b"\x00\x00\x00\x00", rfbclient.SecurityResult(True)),
    ("security_result", (V38,), b"\x00\x00\x00\x01\x00\x00\x00\x03bad",
     rfbclient.SecurityResult(False, "bad")),
    ("security_result", (V37,), b"\x00\x00\x00\x01", rfbclient.SecurityResult(False)),
    ("security_result", (V33,), b"\x00\x00\x00\x01", rfbclient.SecurityResult(False)),
    ("server_init", (), struct.pack(">HH", 1024, 768) + LE_888 + b"\x00\x00\x00\x05guest",
     rfbclient.ServerInit(1024, 768, rfb.DEFAULT_PIXEL_FORMAT, "guest")),
    ("server_init", (), struct.pack(">HH", 1, 1) + LE_888 + b"\x00\x00\x00\x00",
     rfbclient.ServerInit(1, 1, rfb.DEFAULT_PIXEL_FORMAT, "")),
]
STEP_IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(STEPS)]


def run_step(reader, name, args):
    return getattr(reader, name)(*args)


@pytest.mark.parametrize("name,args,data,expected", STEPS, ids=STEP_IDS)
def test_handshake_step_whole(name, args, data, expected):
    reader = rfbclient.HandshakeReader()
    reader.feed(data)
    assert run_step(reader, name, args) == expected


@pytest.mark.parametrize("name,args,data,expected", STEPS, ids=STEP_IDS)
def test_handshake_step_byte_by_byte(name, args, data, expected):
    reader = rfbclient.HandshakeReader()
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1])
        assert run_step(reader, name, args) is None
        assert 1 <= reader.needed <= len(data) - i - 1
    reader.feed(data[-1:])
    assert run_step(reader, name, args) == expected


@pytest.mark.parametrize("name,args,data,expected", STEPS, ids=STEP_IDS)
def test_handshake_step_exactly_what_is_needed(name, args, data, expected):
    """A caller that reads exactly `needed` bytes each time never reads past the step."""
    reader = rfbclient.HandshakeReader()
    offset = 0
    while (result := run_step(reader, name, args)) is None:
        reader.feed(data[offset : offset + reader.needed])
        offset += reader.needed
    assert (result, offset) == (expected, len(data))


@pytest.mark.parametrize("name,args,data,expected", STEPS, ids=STEP_IDS)
def test_handshake_step_leaves_trailing_bytes(name, args, data, expected):
    reader = rfbclient.HandshakeReader()
    reader.feed(data + CHALLENGE[:10])
    assert run_step(reader, name, args) == expected
    assert reader.challenge() is None
    assert reader.needed == 6
    reader.feed(CHALLENGE[10:])
    assert reader.challenge() == CHALLENGE


def test_a_whole_handshake_in_one_piece():
    reader = rfbclient.HandshakeReader()
    reader.feed(b"RFB 003.008\n" + b"\x01\x02" + CHALLENGE + b"\0\0\0\0"
                + struct.pack(">HH", 640, 480) + LE_888 + b"\0\0\0\x02vm")
    assert reader.version() == V38
    assert reader.security_types(V38) == [2]
    assert reader.challenge() == CHALLENGE
    assert reader.security_result(V38) == rfbclient.SecurityResult(True)
    assert reader.server_init() == rfbclient.ServerInit(640, 480, rfb.DEFAULT_PIXEL_FORMAT, "vm")


HOSTILE_HANDSHAKES = [
    ("version", (), b"SSH-2.0-x\r\n\0", "bad protocol version"),
    ("version", (), b"RFB 003.002\n", "unsupported"),
    ("security_types", (V38,), b"\x00\x00\x00\x00\x04full", "refused the connection: 'full'"),
    ("security_types", (V33,), b"\x00\x00\x00\x00\x00\x00\x00\x02no",
     "refused the connection: 'no'"),
    ("security_types", (V38,), b"\x00\x00\x10\x00\x00", "reason string of 1048576 bytes"),
    ("security_result", (V38,), b"\x00\x00\x00\x01\xff\xff\xff\xff", "reason string"),
    ("server_init", (), struct.pack(">HH", 9000, 10) + LE_888 + b"\0\0\0\0", "out of range"),
    ("server_init", (), struct.pack(">HH", 8000, 8000) + LE_888 + b"\0\0\0\0", "too large"),
    ("server_init", (), struct.pack(">HH", 0, 10) + LE_888 + b"\0\0\0\0", "out of range"),
    ("server_init", (), struct.pack(">HH", 10, 10) + LE_888 + b"\x7f\xff\xff\xff",
     "desktop name of"),
]


@pytest.mark.parametrize("name,args,data,reason", HOSTILE_HANDSHAKES)
def test_hostile_handshakes_are_refused(name, args, data, reason):
    reader = rfbclient.HandshakeReader()
    reader.feed(data)
    with pytest.raises(rfb.ProtocolError, match=re.escape(reason)):
        run_step(reader, name, args)


def test_client_handshake_messages():
    assert rfbclient.version_bytes(V38) == b"RFB 003.008\n"
    assert rfbclient.security_choice(2) == b"\x02"
    assert rfbclient.client_init(shared=True) == b"\x01"
    assert rfbclient.client_init(shared=False) == b"\x00"


# --- Fuzzed: the same steps, however the bytes are split, and only ProtocolError -------------


u8 = st.integers(0, 255)


@st.composite
def guest_handshakes(draw):
    """A 3.8 guest's handshake up to ServerInit, from the steps above, with a few bytes changed."""
    refused = b"\x00\x00\x00\x00\x02no"
    data = bytearray(b"RFB 003.008\n" + draw(st.sampled_from([b"\x01\x02", refused]))
                     + CHALLENGE + draw(st.sampled_from([b"\0\0\0\0", b"\0\0\0\x01\0\0\0\x01x"]))
                     + struct.pack(">HH", draw(st.sampled_from([1, 640, 9000])), 480) + LE_888
                     + b"\0\0\0\x02vm")
    for index, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), u8), max_size=3)):
        data[index] = value
    return bytes(data)


def read_handshake(data, sizes):
    """(values, error) of a 3.8 client's steps, fed `data` cut into pieces of `sizes`."""
    reader = rfbclient.HandshakeReader()
    steps = [(reader.version, ()), (reader.security_types, (V38,)), (reader.challenge, ()),
             (reader.security_result, (V38,)), (reader.server_init, ())]
    pieces, offset = [], 0
    for size in [*sizes, len(data)]:
        pieces.append(data[offset : offset + size])
        offset += size
    pieces = iter(pieces)
    values = []
    try:
        for step, args in steps:
            while (value := step(*args)) is None:
                piece = next(pieces, None)
                if piece is None:
                    return values, "incomplete"
                reader.feed(piece)
            values.append(value)
    except rfb.ProtocolError as error:
        return values, str(error)
    return values, None


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(guest_handshakes(), st.binary(max_size=200)),
       st.lists(st.integers(1, 40), max_size=30))
def test_handshake_reader_on_fuzzed_input(data, sizes):
    assert read_handshake(data, sizes) == read_handshake(data, [len(data)])
