"""The VT switch: which display a viewer shows, as a table of states and events.

A viewer shows the text console or the guest desktop, never both.  Like a Linux console's
virtual terminals, Ctrl-Alt-F1..F6 (console) and Ctrl-Alt-F7 (desktop) move between them, with
Ctrl-Alt-1..6 and Ctrl-Alt-7 as the alternate that browsers and viewers pass through; and the
desktop coming up or going moves every viewer too.  Each viewer is in one state of the table
`TRANSITIONS`, and one function, `transition`, moves it: the whole policy fits on a screen, and
a test checks that the table answers every (state, event) pair.

viewer.py owns the state and does the switching (release held keys, resize, repaint); this
module is only the decision, so the viewer needs neither of the displays to make it.
"""

from __future__ import annotations

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


CONTROL = {0xFFE3, 0xFFE4}
ALT = {0xFFE9, 0xFFEA, 0xFFE7, 0xFFE8}
F1, F7 = 0xFFBE, 0xFFC4
HOTKEYS = {
    **{F1 + n: TO_CONSOLE for n in range(6)},
    **{ord("1") + n: TO_CONSOLE for n in range(6)},
    F7: TO_DESKTOP,
    ord("7"): TO_DESKTOP,
}


def hotkey(keysym: int, held: set[int]) -> str | None:
    """The switch event a key press means with the keys `held`, or None."""
    if held & CONTROL and held & ALT:
        return HOTKEYS.get(keysym)
    return None
