"""The desktop's SetDesktopSize, piece by piece: the guest's answer read, the request written,
the one request in flight, and a viewer that hears its answer as an answer.

The guest's ExtendedDesktopSize answer is read whole, byte by byte and with trailing data, as
every reader is; the bytes expected are packed here by hand from rfbproto.  The end-to-end
check with TigerVNC's Xvnc is in test_resize_peers.py.
"""

import struct

import pytest

import encoders
import rfb
import rfbclient
import updates
import vncproxy

EXTENDED_DESKTOP_SIZE = -308
SCREEN = rfb.Screen(0x1234, 0, 0, 1024, 768, 0)


def extended(reason, status, width, height, screen_id=0x1234):
    header = struct.pack(">BxHHHHHi", 0, 1, reason, status, width, height,
                         EXTENDED_DESKTOP_SIZE)
    return header + struct.pack(">B3xIHHHHI", 1, screen_id, 0, 0, width, height, 0)


def events_of(reader, stream, step):
    events = []
    for start in range(0, len(stream), step):
        reader.feed(stream[start:start + step])
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def guest_screen(width, height):
    return rfb.Screen(0x1234, 0, 0, width, height, 0)


ANSWERS = [
    (extended(1, 0, 800, 600), rfbclient.DesktopResize(800, 600, guest_screen(800, 600), 0)),
    (extended(1, 3, 0, 0), rfbclient.DesktopResize(1024, 768, guest_screen(0, 0), 3)),
    (extended(0, 0, 640, 480), rfbclient.DesktopResize(640, 480, guest_screen(640, 480))),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("stream", "expected"), ANSWERS)
def test_the_guests_answer_is_read_whole_and_byte_by_byte_with_trailing_data(stream, expected,
                                                                            step):
    reader = rfbclient.ServerReader(1024, 768)
    whole = stream + b"\x02\x00"
    events = events_of(reader, whole, step or len(whole))
    assert events == [expected, rfbclient.UpdateEnd(), rfbclient.Bell()]
    assert (reader.width, reader.height) == (expected.width, expected.height)
    assert reader.mid_message


def test_a_refusal_nobody_asked_for_is_still_a_protocol_error():
    reader = rfbclient.ServerReader(1024, 768)
    reader.feed(extended(0, 1, 800, 600))
    with pytest.raises(rfb.ProtocolError, match="unasked for"):
        reader.next_event()


def test_set_desktop_size_names_the_guests_screen():
    assert rfbclient.set_desktop_size(800, 600, SCREEN) == (
        b"\xfb\x00\x03\x20\x02\x58\x01\x00"
        + b"\x00\x00\x12\x34" + b"\x00\x00\x00\x00\x03\x20\x02\x58" + b"\x00\x00\x00\x00")


class Upstream:
    def __init__(self):
        self.sent = []

    def send(self, data):
        self.sent.append(data)


def test_the_desktop_asks_the_guest_once_at_a_time_and_hands_back_its_answer():
    upstream = Upstream()
    desktop = vncproxy.DesktopDisplay(1024, 768, upstream)
    first, second = [], []
    desktop.resize(800, 600, first.append)
    assert first == [rfb.ExtendedDesktopSizeStatus.PROHIBITED] and not upstream.sent
    desktop.apply(rfbclient.DesktopResize(1024, 768, SCREEN))
    first.clear()
    desktop.resize(800, 600, first.append)
    desktop.resize(640, 480, second.append)
    assert upstream.sent == [rfbclient.set_desktop_size(800, 600, SCREEN)]
    assert second == [rfb.ExtendedDesktopSizeStatus.OUT_OF_RESOURCES] and first == []
    desktop.apply(rfbclient.DesktopResize(800, 600, SCREEN, 0))
    assert first == [0] and desktop.size == (800, 600)


def test_a_viewer_waiting_for_its_answer_gets_the_new_size_as_that_answer():
    desktop = vncproxy.DesktopDisplay(1024, 768, Upstream())
    encoder = encoders.ViewerEncoder()
    encoder.set_encodings([0, EXTENDED_DESKTOP_SIZE])
    viewer = updates.Updates(desktop, encoder, desktop.size)
    viewer.request(incremental=False)
    assert viewer.size_rects() == [rfb.extended_desktop_size(1024, 768, 0, 0)]
    viewer.ask_resize()
    desktop.apply(rfbclient.DesktopResize(800, 600, SCREEN, 0))
    assert viewer.size_rects() == []
    viewer.answer_resize(0)
    assert viewer.size_rects() == [rfb.extended_desktop_size(800, 600, 1, 0)]
