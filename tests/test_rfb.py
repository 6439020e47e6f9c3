"""rfb.py: handshake steps, pixel formats, and every client message reader.

Every reader is fed each message whole, one byte at a time, and followed by trailing bytes
(h11's recipe): the messages must come out the same and the trailing bytes stay buffered.
The wire bytes are written out by hand from RFC 6143, not produced by rfb.py.
"""

import struct

import pytest

import rfb

LE_888 = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)

MESSAGES = [
    (b"\x00\x00\x00\x00" + LE_888, rfb.SetPixelFormat(rfb.DEFAULT_PIXEL_FORMAT)),
    (b"\x02\x00\x00\x03" + struct.pack(">iii", 7, 0, -223),
     rfb.SetEncodings((7, 0, -223))),
    (b"\x02\x00\x00\x00", rfb.SetEncodings(())),
    (b"\x03\x01\x00\x0a\x00\x14\x02\x80\x01\x90",
     rfb.FramebufferUpdateRequest(True, 10, 20, 640, 400)),
    (b"\x04\x01\x00\x00\x00\x00\xff\x0d", rfb.KeyEvent(True, 0xFF0D)),
    (b"\x04\x00\x00\x00\x01\x00\x20\xac", rfb.KeyEvent(False, 0x010020AC)),
    (b"\x05\x09\x01\x00\x00\x05", rfb.PointerEvent(9, 256, 5)),
    (b"\x06\x00\x00\x00\x00\x00\x00\x05hello", rfb.ClientCutText(b"hello")),
    (b"\x06\x00\x00\x00\x00\x00\x00\x00", rfb.ClientCutText(b"")),
    (b"\xfb\x00\x04\x00\x03\x00\x01\x00" + struct.pack(">IHHHHI", 0, 0, 0, 1024, 768, 0),
     rfb.SetDesktopSize(1024, 768, (rfb.Screen(0, 0, 0, 1024, 768, 0),))),
    (b"\xff\x00\x00\x01\x00\x00\x00\x61\x00\x00\x00\x10",
     rfb.QemuExtendedKeyEvent(True, 0x61, 0x10)),
    (b"\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xcd",
     rfb.QemuExtendedKeyEvent(False, 0, 0xCD)),
]


def read_all(reader):
    messages = []
    while (message := reader.next_message()) is not None:
        messages.append(message)
    return messages


@pytest.mark.parametrize("data,expected", MESSAGES)
def test_reader_whole(data, expected):
    reader = rfb.ClientReader()
    reader.feed(data)
    assert read_all(reader) == [expected]


@pytest.mark.parametrize("data,expected", MESSAGES)
def test_reader_byte_by_byte(data, expected):
    reader = rfb.ClientReader()
    seen = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        seen += read_all(reader)
        if i < len(data) - 1:
            assert seen == []
    assert seen == [expected]


@pytest.mark.parametrize("data,expected", MESSAGES)
def test_reader_trailing_data_stays(data, expected):
    reader = rfb.ClientReader()
    reader.feed(data + b"\x04\x01\x00")
    assert reader.next_message() == expected
    assert reader.next_message() is None
    reader.feed(b"\x00\x00\x00\x00\x61")
    assert reader.next_message() == rfb.KeyEvent(True, 0x61)


def test_all_messages_back_to_back():
    reader = rfb.ClientReader()
    reader.feed(b"".join(data for data, _ in MESSAGES))
    assert read_all(reader) == [expected for _, expected in MESSAGES]


def test_unknown_message_type_is_a_protocol_error():
    reader = rfb.ClientReader()
    reader.feed(b"\x07\x00\x00\x00")
    with pytest.raises(rfb.ProtocolError, match="unknown client message type 7"):
        reader.next_message()


def test_cut_text_is_capped_and_streamed():
    reader = rfb.ClientReader()
    size = rfb.CUT_TEXT_LIMIT * 3
    reader.feed(b"\x06\x00\x00\x00" + struct.pack(">I", size))
    chunk = b"x" * 65536
    messages = []
    for _ in range(size // len(chunk)):
        reader.feed(chunk)
        messages += read_all(reader)
        assert len(reader._buffer) == 0
    reader.feed(b"\x04\x01\x00\x00\x00\x00\x00\x41")
    messages += read_all(reader)
    assert messages[0] == rfb.ClientCutText(b"x" * rfb.CUT_TEXT_LIMIT)
    assert messages[1] == rfb.KeyEvent(True, 0x41)


def test_negative_cut_text_length_is_refused():
    reader = rfb.ClientReader()
    reader.feed(b"\x06\x00\x00\x00\x80\x00\x00\x00")
    with pytest.raises(rfb.ProtocolError):
        reader.next_message()


def test_set_desktop_size_screen_count_is_checked():
    reader = rfb.ClientReader()
    reader.feed(b"\xfb\x00\x04\x00\x03\x00\x00\x00")
    with pytest.raises(rfb.ProtocolError, match="0 screens"):
        reader.next_message()


@pytest.mark.parametrize("fields,reason", [
    ((24, 24, 0, 1, 255, 255, 255, 16, 8, 0), "bits-per-pixel"),
    ((32, 24, 0, 0, 255, 255, 255, 16, 8, 0), "colour-map"),
    ((32, 40, 0, 1, 255, 255, 255, 16, 8, 0), "depth"),
    ((16, 16, 0, 1, 30, 63, 31, 11, 5, 0), "2\\^n-1"),
    ((16, 16, 0, 1, 511, 63, 31, 11, 5, 0), "2\\^n-1"),
    ((16, 16, 0, 1, 31, 63, 31, 12, 5, 0), "overflows"),
    ((16, 16, 0, 1, 31, 63, 31, 10, 5, 0), "overlap"),
    ((8, 6, 0, 1, 7, 7, 3, 5, 2, 0), "more bits than the depth"),
])
def test_bad_pixel_formats_are_refused(fields, reason):
    reader = rfb.ClientReader()
    reader.feed(b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", *fields))
    with pytest.raises(rfb.ProtocolError, match=reason):
        reader.next_message()


@pytest.mark.parametrize("fields", [
    (32, 24, 1, 1, 255, 255, 255, 0, 8, 16),
    (16, 16, 0, 1, 31, 63, 31, 11, 5, 0),
    (16, 15, 1, 1, 31, 31, 31, 10, 5, 0),
    (8, 8, 0, 1, 7, 7, 3, 5, 2, 0),
    (8, 6, 0, 1, 3, 3, 3, 4, 2, 0),
    (8, 3, 0, 1, 1, 1, 1, 2, 1, 0),
])
def test_good_pixel_formats_round_trip(fields):
    data = struct.pack(">BBBBHHHBBB3x", *fields)
    pixel_format = rfb.PixelFormat.from_bytes(data)
    pixel_format.check()
    assert pixel_format.to_bytes() == data


@pytest.mark.parametrize("client,agreed", [
    (b"RFB 003.003\n", (3, 3)),
    (b"RFB 003.005\n", (3, 3)),
    (b"RFB 003.006\n", (3, 3)),
    (b"RFB 003.007\n", (3, 7)),
    (b"RFB 003.008\n", (3, 8)),
    (b"RFB 003.014\n", (3, 8)),
    (b"RFB 003.889\n", (3, 8)),
])
def test_client_versions(client, agreed):
    assert rfb.parse_client_version(client) == agreed


@pytest.mark.parametrize("client", [
    b"RFB 004.000\n", b"RFB 003.002\n", b"RFB 3.8\n\0\0\0\0", b"GET / HTTP/1.\n", b"RFB 003.008\r",
])
def test_bad_client_versions(client):
    with pytest.raises(rfb.ProtocolError):
        rfb.parse_client_version(client)


def test_security_steps_per_version():
    assert rfb.security_offer((3, 3), [1]) == b"\x00\x00\x00\x01"
    assert rfb.security_offer((3, 8), [1, 2]) == b"\x02\x01\x02"
    assert rfb.parse_security_choice(b"\x01", [1]) == 1
    with pytest.raises(rfb.ProtocolError):
        rfb.parse_security_choice(b"\x02", [1])
    assert not rfb.needs_security_result((3, 7), 1)
    assert rfb.needs_security_result((3, 8), 1)
    assert rfb.needs_security_result((3, 3), 2)
    assert rfb.security_result((3, 8), False, "no") == b"\x00\x00\x00\x01\x00\x00\x00\x02no"
    assert rfb.security_result((3, 7), False, "no") == b"\x00\x00\x00\x01"
    assert rfb.security_refusal((3, 3), "full") == b"\x00\x00\x00\x00\x00\x00\x00\x04full"
    assert rfb.security_refusal((3, 8), "full") == b"\x00\x00\x00\x00\x04full"


def test_server_init_layout():
    data = rfb.server_init(640, 400, rfb.DEFAULT_PIXEL_FORMAT, "console")
    assert data[:4] == b"\x02\x80\x01\x90"
    assert data[4:20] == LE_888
    assert data[20:] == b"\x00\x00\x00\x07console"


def test_unknown_qemu_subtype_is_a_protocol_error():
    reader = rfb.ClientReader()
    reader.feed(b"\xff\x01" + bytes(10))
    with pytest.raises(rfb.ProtocolError, match="QEMU client message subtype 1"):
        reader.next_message()


def test_qemu_input_pseudo_rectangles():
    assert rfb.qemu_extended_key_event() == struct.pack(">HHHHi", 0, 0, 0, 0, -258)
    assert rfb.led_state(5) == struct.pack(">HHHHiB", 0, 0, 0, 0, -261, 5)
    assert rfb.vmware_led_state(4) == struct.pack(">HHHHiI", 0, 0, 0, 0, 0x574D5668, 4)
    assert rfb.pointer_type_change(True, 720, 400) == struct.pack(
        ">HHHHi", 1, 0, 720, 400, -257)
    assert rfb.pointer_type_change(False, 640, 480)[:2] == b"\0\0"


def test_server_messages():
    assert rfb.bell() == b"\x02"
    assert rfb.server_cut_text(b"hi") == b"\x03\x00\x00\x00\x00\x00\x00\x02hi"
    assert rfb.copy_rect(0, 0, 8, 16, 0, 16) == struct.pack(">HHHHiHH", 0, 0, 8, 16, 1, 0, 16)
    assert rfb.desktop_size(1024, 768) == struct.pack(">HHHHi", 0, 0, 1024, 768, -223)
    assert rfb.extended_desktop_size(640, 400, 1, 1) == struct.pack(
        ">HHHHiB3xIHHHHI", 1, 1, 640, 400, -308, 1, 1, 0, 0, 640, 400, 0)
    assert rfb.framebuffer_update([b"A", b"B"]) == b"\x00\x00\x00\x02AB"
