"""The XF86Switch_VT_n keysyms as VT-switch hotkeys, without a real viewer.

An X server binds Ctrl-Alt-F1..F12 to its own VT switch, so a viewer running on X never sees
the F-key press: xtightvncviewer, ssvncviewer and Remmina forward only its release, as keysym
XF86Switch_VT_n (0x1008FE0n), while Ctrl and Alt are still held (test_more_viewers.py shows it
with the real programs).  Here the same key events come from our raw viewer, to pin down the
corners: the lone release switches, a press and release switch once, the keysym never reaches
the guest, and the other hotkeys still act on the press only.
"""

import pytest

import vt
from harness import Proxy, follow, leak_checked, shows
from peers import wait_until
from vt import TO_CONSOLE, TO_DESKTOP

CONTROL_L, ALT_L, F1 = 0xFFE3, 0xFFE9, 0xFFBE
SWITCH_VT_1, SWITCH_VT_6, SWITCH_VT_7 = 0x1008FE01, 0x1008FE06, 0x1008FE07
GREEN = (0, 200, 0)


@pytest.fixture
def proxy():
    yield from leak_checked(Proxy)


@pytest.mark.parametrize("keysym,held,down,expected", [
    (SWITCH_VT_1, {CONTROL_L, ALT_L}, False, TO_CONSOLE),
    (SWITCH_VT_6, {CONTROL_L, ALT_L}, False, TO_CONSOLE),
    (SWITCH_VT_7, {CONTROL_L, ALT_L}, False, TO_DESKTOP),
    (SWITCH_VT_1, set(), False, TO_CONSOLE),
    (SWITCH_VT_7, set(), True, TO_DESKTOP),
    (SWITCH_VT_7 + 1, {CONTROL_L, ALT_L}, False, None),
    (F1, {CONTROL_L, ALT_L}, True, TO_CONSOLE),
    (F1, {CONTROL_L, ALT_L}, False, None),
    (ord("7"), {CONTROL_L, ALT_L}, False, None),
])
def test_switch_keysyms_are_hotkeys_pressed_or_released(keysym, held, down, expected):
    assert vt.hotkey(keysym, held, down) == expected


def x_viewer_hotkey(client, keysym):
    """What an X viewer sends for Ctrl-Alt-Fn: the modifiers, and only the release of keysym."""
    client.key(CONTROL_L)
    client.key(ALT_L)
    client.key(keysym, down=False)
    client.key(ALT_L, down=False)
    client.key(CONTROL_L, down=False)


def on_desktop(client):
    return (client.width, client.height) == (320, 200) and shows(GREEN)(client)


def test_a_lone_release_switches_and_never_reaches_the_guest(proxy):
    p = proxy()
    client = p.viewer()
    client.request(incremental=False)
    client.read_update()
    console_size = (client.width, client.height)
    guest = p.guest(width=320, height=200, colour=GREEN)
    guest.paint()
    assert follow(client, on_desktop)
    x_viewer_hotkey(client, SWITCH_VT_1)
    assert follow(client, lambda c: (c.width, c.height) == console_size)
    x_viewer_hotkey(client, SWITCH_VT_7)
    assert follow(client, on_desktop)
    client.key(SWITCH_VT_1)
    client.key(SWITCH_VT_1, down=False)
    assert follow(client, lambda c: (c.width, c.height) == console_size)
    assert wait_until(lambda: len(guest.key_events()) >= 4)
    events = guest.key_events()
    assert not any(keysym in vt.SWITCH_VT for _, keysym in events), events
    assert events.count((True, CONTROL_L)) == events.count((False, CONTROL_L))
    assert events.count((True, ALT_L)) == events.count((False, ALT_L))
