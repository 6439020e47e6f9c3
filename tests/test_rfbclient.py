"""rfbclient.py's readers on the corners real guests reach: long runs of empty rectangles and
cursors whose hotspot lies just outside the image.

The wire bytes are written by hand from RFC 6143 with `struct`, not produced by rfbclient.py.
"""

import struct

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
