"""QEMU's input extensions through the proxy, against a scripted QEMU-like guest.

A guest that sends the QEMU Extended Key Event pseudo-rectangle (-258) takes scancodes: a viewer
that listed -258 is invited in turn, and its extended key events reach the guest unchanged.
Hotkeys still work by keysym, keys held across a switch are released in the form they were
pressed, and a display that does not take scancodes gets the keysym.  The guest's LED State
(-261) reaches each viewer in the form it listed (or not at all), and Pointer Type Change (-257)
reaches viewers that listed it, with relative motion passed through or worked out from
positions.  The real QEMU is in test_qemu_desktop.py; these are the corners it does not show.
"""

import struct

import pytest

from harness import Proxy, console_reads, follow, leak_checked
from peers import wait_until as wait_for
from rawviewer import (
    DESKTOP_SIZE,
    LED_STATE,
    POINTER_TYPE_CHANGE,
    QEMU_EXTENDED_KEY_EVENT,
    RAW,
    VMWARE_LED_STATE,
)

CONTROL_L, ALT_L, F1, F7 = 0xFFE3, 0xFFE9, 0xFFBE, 0xFFC4
SC_CONTROL_L, SC_ALT_L, SC_F1, SC_F7, SC_A, SC_Q = 0x1D, 0x38, 0x3B, 0x41, 0x1E, 0x10
ORIGIN = 0x7FFF


@pytest.fixture
def proxy():
    yield from leak_checked(Proxy)


def qemu_guest(p, *rects):
    """A painted guest that has sent QEMU's pseudo-rectangles `rects` (empty ones, or LEDs)."""
    guest = p.guest()
    guest.paint()
    if rects:
        guest.send_update(*rects)
    return guest


def on_desktop(client, guest):
    return follow(client, lambda c: (c.width, c.height) == (guest.width, guest.height))


def rects_of(client, encoding):
    return [rect for rect in client.rects if rect[4] == encoding]


def test_scancodes_pass_through_to_a_guest_that_takes_them(proxy):
    p = proxy()
    guest = qemu_guest(p, struct.pack(">HHHHi", 0, 0, 0, 0, QEMU_EXTENDED_KEY_EVENT))
    invited = p.viewer(RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY_EVENT)
    plain = p.viewer(RAW, DESKTOP_SIZE)
    for client in (invited, plain):
        client.request(incremental=False)
        assert on_desktop(client, guest)
    assert follow(invited, lambda c: rects_of(c, QEMU_EXTENDED_KEY_EVENT))
    invited.scancode(ord("q"), SC_A)  # a French layout's "a" key, named by a US keysym
    invited.scancode(ord("q"), SC_A, down=False)
    plain.key(ord("z"))
    plain.key(ord("z"), down=False)
    assert wait_for(lambda: len(guest.scancode_events()) == 2 and len(guest.key_events()) == 2)
    assert guest.scancode_events() == [(True, ord("q"), SC_A), (False, ord("q"), SC_A)]
    assert guest.key_events() == [(True, ord("z")), (False, ord("z"))]
    assert rects_of(plain, QEMU_EXTENDED_KEY_EVENT) == []


def test_no_invitation_from_a_desktop_that_takes_keysyms_only(proxy):
    p = proxy()
    guest = qemu_guest(p)
    client = p.viewer(RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY_EVENT)
    client.request(incremental=False)
    assert on_desktop(client, guest)
    guest.paint((200, 0, 0))
    client.request(incremental=True)
    client.read_update()
    assert rects_of(client, QEMU_EXTENDED_KEY_EVENT) == []
    client.scancode(ord("x"), 0x2D)  # uninvited, but harmless: its keysym is used
    client.scancode(0, 0x2D, down=False)
    assert wait_for(lambda: guest.key_events() == [(True, ord("x")), (False, ord("x"))])
    assert guest.scancode_events() == []


def test_hotkeys_by_keysym_and_held_scancodes_released_as_scancodes(proxy):
    p = proxy()
    guest = qemu_guest(p, struct.pack(">HHHHi", 0, 0, 0, 0, QEMU_EXTENDED_KEY_EVENT))
    client = p.viewer(RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY_EVENT)
    client.request(incremental=False)
    assert on_desktop(client, guest)
    client.scancode(ord("Q"), SC_Q)
    client.scancode(CONTROL_L, SC_CONTROL_L)
    client.scancode(ALT_L, SC_ALT_L)
    client.scancode(F1, SC_F1)
    assert follow(client, lambda c: (c.width, c.height) != (guest.width, guest.height))
    for keysym, keycode in ((F1, SC_F1), (ALT_L, SC_ALT_L), (CONTROL_L, SC_CONTROL_L),
                            (ord("q"), SC_Q)):
        client.scancode(keysym, keycode, down=False)
    client.scancode(ord("b"), 0x30)
    client.scancode(ord("b"), 0x30, down=False)
    assert console_reads(p.master) == b"b"
    events = guest.scancode_events()
    assert events[0] == (True, ord("Q"), SC_Q)
    assert sorted(events[1:]) == sorted([
        (True, CONTROL_L, SC_CONTROL_L), (True, ALT_L, SC_ALT_L),
        (False, ord("Q"), SC_Q), (False, CONTROL_L, SC_CONTROL_L), (False, ALT_L, SC_ALT_L)])
    assert guest.key_events() == []
    client.scancode(CONTROL_L, SC_CONTROL_L)
    client.scancode(ALT_L, SC_ALT_L)
    client.scancode(F7, SC_F7)
    assert follow(client, lambda c: (c.width, c.height) == (guest.width, guest.height))


@pytest.mark.parametrize("encodings,expected", [
    ((LED_STATE,), [4, 6]),
    ((VMWARE_LED_STATE,), [4, 6]),
    ((VMWARE_LED_STATE, LED_STATE), [4, 6]),
    ((), []),
])
def test_led_state_reaches_viewers_in_the_form_they_listed(proxy, encodings, expected):
    p = proxy()
    guest = qemu_guest(p, struct.pack(">HHHHiB", 0, 0, 0, 0, LED_STATE, 4))
    client = p.viewer(RAW, DESKTOP_SIZE, *encodings)
    client.request(incremental=False)
    assert on_desktop(client, guest)
    assert follow(client, lambda c: c.leds[:1] == expected[:1])
    guest.send_update(struct.pack(">HHHHiB", 0, 0, 0, 0, LED_STATE, 6),
                      guest.raw(0, 0, 4, 4, (9, 9, 9)))
    client.request(incremental=True)
    client.read_update()
    assert follow(client, lambda c: c.leds == expected)
    kinds = {rect[4] for rect in client.rects}
    assert (LED_STATE in kinds) == (LED_STATE in encodings)
    assert (VMWARE_LED_STATE in kinds) == (encodings == (VMWARE_LED_STATE,))


def test_relative_pointer_passes_through_or_is_worked_out(proxy):
    p = proxy()
    relative = struct.pack(">HHHHi", 0, 0, 320, 200, POINTER_TYPE_CHANGE)
    guest = qemu_guest(p, relative)
    speaker = p.viewer(RAW, DESKTOP_SIZE, POINTER_TYPE_CHANGE)
    plain = p.viewer(RAW, DESKTOP_SIZE)
    for client in (speaker, plain):
        client.request(incremental=False)
        assert on_desktop(client, guest)
    assert follow(speaker, lambda c: [r[0] for r in rects_of(c, POINTER_TYPE_CHANGE)] == [0])
    speaker.pointer(1, ORIGIN + 5, ORIGIN - 3)
    assert wait_for(lambda: len(guest.pointer_events()) == 1)
    plain.pointer(0, 10, 10)
    plain.pointer(0, 15, 7)
    assert wait_for(lambda: len(guest.pointer_events()) == 3)
    assert guest.pointer_events() == [(1, ORIGIN + 5, ORIGIN - 3), (0, ORIGIN + 10, ORIGIN + 10),
                                      (0, ORIGIN + 5, ORIGIN - 3)]
    speaker.key(CONTROL_L)
    speaker.key(ALT_L)
    speaker.key(F1)
    assert follow(speaker, lambda c: [r[0] for r in rects_of(c, POINTER_TYPE_CHANGE)] == [0, 1])
    assert wait_for(lambda: guest.pointer_events()[-1] == (0, ORIGIN, ORIGIN))


def test_a_key_is_released_in_the_form_it_was_pressed_when_the_guest_changes_meanwhile(proxy):
    p = proxy()
    guest = qemu_guest(p)
    client = p.viewer(RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY_EVENT)
    client.request(incremental=False)
    assert on_desktop(client, guest)
    client.scancode(ord("a"), SC_A)  # before the guest takes scancodes: goes as a keysym
    assert wait_for(lambda: guest.key_events() == [(True, ord("a"))])
    guest.send_update(struct.pack(">HHHHi", 0, 0, 0, 0, QEMU_EXTENDED_KEY_EVENT))
    assert follow(client, lambda c: rects_of(c, QEMU_EXTENDED_KEY_EVENT))
    client.scancode(ord("a"), SC_A, down=False)
    client.scancode(ord("q"), SC_Q)
    assert wait_for(lambda: guest.scancode_events() == [(True, ord("q"), SC_Q)])
    assert guest.key_events() == [(True, ord("a")), (False, ord("a"))]
