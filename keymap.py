"""X keysyms to the bytes xterm sends, for a viewer typing into a text console.

A VNC viewer reports keys as X keysyms (RFC 6143 §7.5.4), already shifted: Shift+a arrives as
`A`, so we never apply Shift to printable characters ourselves.  A terminal program wants the
bytes an xterm would send for the same keys (xterm's ctlseqs, "PC-Style Function Keys"):

* printable Latin-1 and Unicode keysyms become UTF-8;
* Ctrl turns letters and `@[\\]^_ ?` (and the digit aliases 2-8) into C0 control codes;
* Alt or Meta prefix the key's bytes with ESC (xterm's metaSendsEscape, the Linux default);
* cursor keys, Home/End, the editing keys and F1-F12 become CSI or SS3 sequences, with xterm's
  modifier parameter (`CSI 1;5C` for Ctrl-Right) when Shift, Alt or Ctrl is held, and SS3 for
  cursor keys when the program switched on application cursor mode (DECCKM);
* the keypad sends what its label says (NumLock assumed on).

`Modifiers` tracks which modifier keys one viewer holds; each viewer has its own.

The other way round, `typed_keys` turns a character into the key presses that type it on a
guest (a typed paste): a US keyboard's keysyms, with Shift where that keyboard needs it, and
Unicode keysyms for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CSI = "\x1b["
SS3 = "\x1bO"

SHIFT = {0xFFE1, 0xFFE2}
CONTROL = {0xFFE3, 0xFFE4}
ALT = {0xFFE7, 0xFFE8, 0xFFE9, 0xFFEA}  # Meta_L/R, Alt_L/R
MODIFIER_KEYSYMS = SHIFT | CONTROL | ALT | {0xFFEB, 0xFFEC, 0xFFE5, 0xFF7F, 0xFE03, 0xFF7E}

# Keys that are a single control code whatever the modifiers (xterm sends ESC first for Alt).
PLAIN_KEYS = {
    0xFF08: "\x7f",  # BackSpace: ^? as on the Linux console and VTE
    0xFF09: "\t",  # Tab
    0xFF0D: "\r",  # Return
    0xFF1B: "\x1b",  # Escape
    0xFF8D: "\r",  # KP_Enter
    0xFF8A: "\t",  # KP_Tab
}

# Cursor-style keys: final byte of CSI x / SS3 x.
CURSOR_KEYS = {
    0xFF52: "A", 0xFF54: "B", 0xFF53: "C", 0xFF51: "D",  # Up Down Right Left
    0xFF50: "H", 0xFF57: "F",  # Home End
    0xFF97: "A", 0xFF99: "B", 0xFF98: "C", 0xFF96: "D",  # KP_Up KP_Down KP_Right KP_Left
    0xFF95: "H", 0xFF9C: "F", 0xFF9D: "E",  # KP_Home KP_End KP_Begin
}

# Tilde keys: CSI n ~.
TILDE_KEYS = {
    0xFF63: 2, 0xFFFF: 3, 0xFF55: 5, 0xFF56: 6,  # Insert Delete Prior Next
    0xFF9E: 2, 0xFF9F: 3, 0xFF9A: 5, 0xFF9B: 6,  # keypad versions
    0xFFC2: 15, 0xFFC3: 17, 0xFFC4: 18, 0xFFC5: 19,  # F5-F8
    0xFFC6: 20, 0xFFC7: 21, 0xFFC8: 23, 0xFFC9: 24,  # F9-F12
}

FUNCTION_KEYS = {0xFFBE: "P", 0xFFBF: "Q", 0xFFC0: "R", 0xFFC1: "S"}  # F1-F4: SS3 x

KEYPAD_CHARACTERS = {
    0xFFAA: "*", 0xFFAB: "+", 0xFFAC: ",", 0xFFAD: "-", 0xFFAE: ".", 0xFFAF: "/", 0xFFBD: "=",
    **{0xFFB0 + digit: str(digit) for digit in range(10)},
}

# Ctrl with a non-letter: the C0 code xterm sends.
CONTROL_CHARACTERS = {
    "@": "\0", " ": "\0", "2": "\0", "[": "\x1b", "3": "\x1b", "\\": "\x1c", "4": "\x1c",
    "]": "\x1d", "5": "\x1d", "^": "\x1e", "6": "\x1e", "_": "\x1f", "/": "\x1f", "7": "\x1f",
    "?": "\x7f", "8": "\x7f",
}

ISO_LEFT_TAB = 0xFE20


@dataclass
class Modifiers:
    """The modifier keys one viewer holds down."""

    held: set[int] = field(default_factory=set)

    def update(self, keysym: int, down: bool) -> bool:
        """Track a modifier key; True if the keysym was one (and so produces no bytes)."""
        if keysym not in MODIFIER_KEYSYMS:
            return False
        if down:
            self.held.add(keysym)
        else:
            self.held.discard(keysym)
        return True

    @property
    def shift(self) -> bool:
        return bool(self.held & SHIFT)

    @property
    def control(self) -> bool:
        return bool(self.held & CONTROL)

    @property
    def alt(self) -> bool:
        return bool(self.held & ALT)

    @property
    def parameter(self) -> int:
        """xterm's modifier parameter: 1 + Shift 1 + Alt 2 + Ctrl 4."""
        return 1 + self.shift + 2 * self.alt + 4 * self.control


def keysym_character(keysym: int) -> str | None:
    """The character a printable keysym stands for, or None."""
    if 0x20 <= keysym <= 0x7E or 0xA0 <= keysym <= 0xFF:
        return chr(keysym)
    if 0x01000100 <= keysym <= 0x0110FFFF:
        return chr(keysym - 0x01000000)
    return None


def key_bytes(keysym: int, modifiers: Modifiers, application_cursor: bool = False) -> bytes:
    """The bytes a key press sends to the terminal program (empty if none)."""
    return _key_text(keysym, modifiers, application_cursor).encode("utf-8", "surrogatepass")


def _key_text(keysym: int, modifiers: Modifiers, application_cursor: bool) -> str:
    parameter = modifiers.parameter
    if keysym == ISO_LEFT_TAB or (keysym == 0xFF09 and modifiers.shift):
        return CSI + "Z"
    if keysym in CURSOR_KEYS:
        final = CURSOR_KEYS[keysym]
        if parameter > 1:
            return f"{CSI}1;{parameter}{final}"
        return (SS3 if application_cursor else CSI) + final
    if keysym in TILDE_KEYS:
        number = TILDE_KEYS[keysym]
        return f"{CSI}{number};{parameter}~" if parameter > 1 else f"{CSI}{number}~"
    if keysym in FUNCTION_KEYS:
        final = FUNCTION_KEYS[keysym]
        return f"{CSI}1;{parameter}{final}" if parameter > 1 else SS3 + final
    prefix = "\x1b" if modifiers.alt else ""
    if keysym in PLAIN_KEYS:
        if keysym == 0xFF08 and modifiers.control:
            return prefix + "\x08"
        return prefix + PLAIN_KEYS[keysym]
    character = KEYPAD_CHARACTERS.get(keysym) or keysym_character(keysym)
    if character is None:
        return ""
    if modifiers.control:
        character = _control(character)
    return prefix + character


def _control(character: str) -> str:
    if character.isascii() and character.isalpha():
        return chr(ord(character.upper()) & 0x1F)
    return CONTROL_CHARACTERS.get(character, character)


# Typing text into a guest as key presses (Ctrl-Alt-V on the desktop): the keysyms a US
# keyboard sends, with Shift held for the characters that need it there.
SHIFT_L, RETURN, TAB = 0xFFE1, 0xFF0D, 0xFF09
US_SHIFTED = frozenset('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ')


def typed_keys(character: str) -> list[tuple[int, bool]]:
    """The (keysym, down) events that type one character; none for other control codes."""
    if character in "\r\n":
        keysym = RETURN
    elif character == "\t":
        keysym = TAB
    elif not character.isprintable():
        return []
    elif 0x20 <= ord(character) <= 0x7E or 0xA0 <= ord(character) <= 0xFF:
        keysym = ord(character)
    else:
        keysym = 0x01000000 + ord(character)
    press = [(keysym, True), (keysym, False)]
    if character in US_SHIFTED:
        return [(SHIFT_L, True), *press, (SHIFT_L, False)]
    return press
