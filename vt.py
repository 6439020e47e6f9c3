"""The VT switch: which display a viewer shows, as a table of states and events.

A viewer shows the text console or the guest desktop, never both.  Like a Linux console's
virtual terminals, Ctrl-Alt-F1..F6 (console) and Ctrl-Alt-F7 (desktop) move between them, with
Ctrl-Alt-1..6 and Ctrl-Alt-7 as the alternate that browsers and viewers pass through, and the
XF86Switch_VT_1..7 keysyms that viewers running on X send for Ctrl-Alt-F1..F7; and the desktop
coming up or going moves every viewer too.  Each viewer is in one state of the table
`TRANSITIONS`, and one function, `transition`, moves it: the whole policy fits on a screen, and
a test checks that the table answers every (state, event) pair.

viewer.py owns the state and does the switching (release held keys, resize, repaint); this
module is only the decision, so the viewer needs neither of the displays to make it.

The paste keys are decided here too (`pastes`): Ctrl-Alt-V on either display, which like the
switch keys never reaches the guest, and xterm's Shift+Insert on the console.
"""

from __future__ import annotations

from keymap import ALT, CONTROL, SHIFT

NO_DESKTOP = "no desktop"  # on the console; there is no guest desktop
CONSOLE = "console"  # on the console; a guest desktop is up
DESKTOP = "desktop"  # on the guest desktop

DESKTOP_UP = "desktop up"
DESKTOP_DOWN = "desktop down"
TO_CONSOLE = "hotkey to console"
TO_DESKTOP = "hotkey to desktop"

TRANSITIONS = {
    (NO_DESKTOP, DESKTOP_UP): DESKTOP,
    (NO_DESKTOP, DESKTOP_DOWN): NO_DESKTOP,
    (NO_DESKTOP, TO_CONSOLE): NO_DESKTOP,
    (NO_DESKTOP, TO_DESKTOP): NO_DESKTOP,
    (CONSOLE, DESKTOP_UP): DESKTOP,
    (CONSOLE, DESKTOP_DOWN): NO_DESKTOP,
    (CONSOLE, TO_CONSOLE): CONSOLE,
    (CONSOLE, TO_DESKTOP): DESKTOP,
    (DESKTOP, DESKTOP_UP): DESKTOP,
    (DESKTOP, DESKTOP_DOWN): NO_DESKTOP,
    (DESKTOP, TO_CONSOLE): CONSOLE,
    (DESKTOP, TO_DESKTOP): DESKTOP,
}


def transition(state: str, event: str) -> str:
    """The state a viewer moves to when `event` happens in `state`."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise ValueError(f"no transition from {state!r} on {event!r}") from None


F1, F7 = 0xFFBE, 0xFFC4
SWITCH_VT_1, SWITCH_VT_7 = 0x1008FE01, 0x1008FE07  # XF86Switch_VT_1, XF86Switch_VT_7
# An X server turns Ctrl-Alt-F1..F7 into its own VT switch, so a viewer running on X forwards
# only the release of XF86Switch_VT_n: that keysym is a hotkey by itself, pressed or released.
SWITCH_VT = range(SWITCH_VT_1, SWITCH_VT_7 + 1)
HOTKEYS = {
    **{F1 + n: TO_CONSOLE for n in range(6)},
    **{ord("1") + n: TO_CONSOLE for n in range(6)},
    **{SWITCH_VT_1 + n: TO_CONSOLE for n in range(6)},
    F7: TO_DESKTOP,
    ord("7"): TO_DESKTOP,
    SWITCH_VT_7: TO_DESKTOP,
}


# Paste: Ctrl-Alt-V on either display (vncterm's, never passed to the guest), and xterm's
# Shift+Insert on the console.
PASTE_KEYS = {ord("v"), ord("V")}
INSERT, KP_INSERT = 0xFF63, 0xFF9E


def pastes(keysym: int, held: set[int], on_console: bool) -> bool:
    """Does this key press ask to paste the viewer's clipboard?"""
    if keysym in PASTE_KEYS and held & CONTROL and held & ALT:
        return True
    return on_console and keysym in (INSERT, KP_INSERT) and bool(held & SHIFT) and not (
        held & (CONTROL | ALT))


def hotkey(keysym: int, held: set[int], down: bool = True) -> str | None:
    """The switch event a key press (or release) means with the keys `held`, or None."""
    if keysym in SWITCH_VT or (down and held & CONTROL and held & ALT):
        return HOTKEYS.get(keysym)
    return None
