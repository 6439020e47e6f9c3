"""keymap.py against the byte sequences xterm documents (ctlseqs, "PC-Style Function Keys")."""

import pytest

from keymap import Modifiers, key_bytes

SHIFT_L, CONTROL_L, ALT_L, META_L = 0xFFE1, 0xFFE3, 0xFFE9, 0xFFE7


def held(*keysyms):
    modifiers = Modifiers()
    for keysym in keysyms:
        assert modifiers.update(keysym, True)
    return modifiers


@pytest.mark.parametrize("keysym,expected", [
    (ord("a"), b"a"), (ord("A"), b"A"), (ord("#"), b"#"), (0xE9, "é".encode()),
    (0x010020AC, "€".encode()), (0x01004E2D, "中".encode()),
    (0xFF0D, b"\r"), (0xFF08, b"\x7f"), (0xFF09, b"\t"), (0xFF1B, b"\x1b"),
    (0xFF52, b"\x1b[A"), (0xFF54, b"\x1b[B"), (0xFF53, b"\x1b[C"), (0xFF51, b"\x1b[D"),
    (0xFF50, b"\x1b[H"), (0xFF57, b"\x1b[F"),
    (0xFF63, b"\x1b[2~"), (0xFFFF, b"\x1b[3~"), (0xFF55, b"\x1b[5~"), (0xFF56, b"\x1b[6~"),
    (0xFFBE, b"\x1bOP"), (0xFFBF, b"\x1bOQ"), (0xFFC0, b"\x1bOR"), (0xFFC1, b"\x1bOS"),
    (0xFFC2, b"\x1b[15~"), (0xFFC3, b"\x1b[17~"), (0xFFC4, b"\x1b[18~"), (0xFFC5, b"\x1b[19~"),
    (0xFFC6, b"\x1b[20~"), (0xFFC7, b"\x1b[21~"), (0xFFC8, b"\x1b[23~"), (0xFFC9, b"\x1b[24~"),
    (0xFFB0, b"0"), (0xFFB9, b"9"), (0xFFAB, b"+"), (0xFFAF, b"/"), (0xFF8D, b"\r"),
    (0xFF97, b"\x1b[A"), (0xFF9F, b"\x1b[3~"),
    (0xFE20, b"\x1b[Z"), (0xFFE1, b""), (0xFFE5, b""),
])
def test_plain_keys(keysym, expected):
    assert key_bytes(keysym, Modifiers()) == expected


@pytest.mark.parametrize("keysym,expected", [
    (0xFF52, b"\x1bOA"), (0xFF51, b"\x1bOD"), (0xFF50, b"\x1bOH"), (0xFF57, b"\x1bOF"),
    (0xFF55, b"\x1b[5~"),
])
def test_application_cursor_mode(keysym, expected):
    assert key_bytes(keysym, Modifiers(), application_cursor=True) == expected


@pytest.mark.parametrize("character,expected", [
    ("a", b"\x01"), ("z", b"\x1a"), ("C", b"\x03"), ("@", b"\x00"), (" ", b"\x00"),
    ("[", b"\x1b"), ("\\", b"\x1c"), ("]", b"\x1d"), ("^", b"\x1e"), ("_", b"\x1f"),
    ("?", b"\x7f"), ("2", b"\x00"), ("6", b"\x1e"),
])
def test_control_characters(character, expected):
    assert key_bytes(ord(character), held(CONTROL_L)) == expected


def test_alt_and_meta_prefix_escape():
    assert key_bytes(ord("x"), held(ALT_L)) == b"\x1bx"
    assert key_bytes(ord("x"), held(META_L)) == b"\x1bx"
    assert key_bytes(ord("c"), held(ALT_L, CONTROL_L)) == b"\x1b\x03"
    assert key_bytes(0xFF08, held(ALT_L)) == b"\x1b\x7f"


@pytest.mark.parametrize("modifiers,keysym,expected", [
    ((CONTROL_L,), 0xFF53, b"\x1b[1;5C"),
    ((SHIFT_L,), 0xFF52, b"\x1b[1;2A"),
    ((ALT_L,), 0xFF51, b"\x1b[1;3D"),
    ((SHIFT_L,), 0xFFBE, b"\x1b[1;2P"),
    ((SHIFT_L,), 0xFFC2, b"\x1b[15;2~"),
    ((CONTROL_L, SHIFT_L), 0xFFFF, b"\x1b[3;6~"),
    ((SHIFT_L,), 0xFF09, b"\x1b[Z"),
])
def test_modified_special_keys(modifiers, keysym, expected):
    assert key_bytes(keysym, held(*modifiers), application_cursor=True) == expected


def test_shift_is_not_applied_twice():
    assert key_bytes(ord("A"), held(SHIFT_L)) == b"A"


def test_ctrl_backspace_is_bs():
    assert key_bytes(0xFF08, held(CONTROL_L)) == b"\x08"


def test_modifier_release_is_tracked():
    modifiers = held(CONTROL_L)
    assert modifiers.update(CONTROL_L, False)
    assert key_bytes(ord("c"), modifiers) == b"c"
