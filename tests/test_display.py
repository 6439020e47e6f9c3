"""display.py: both displays plainly satisfy the `Display` protocol that viewer sessions use.

`isinstance` against the runtime-checkable protocol checks that every member is there; the
signatures are compared too, since the protocol is the documentation of the seam and a method
that takes other arguments (the old prose said `key(keysym, modifiers)`) would only fail at the
first key press.  The shared behaviour is checked once on each display: `changes` gives the
whole picture to a new viewer and nothing to one that is up to date.
"""

import inspect

import pytest

import console
import display
import encoders
import render
import sources
import vncproxy

METHODS = ("changes", "key", "pointer", "paste", "clipboard", "resize")


def console_display():
    term = console.Console(sources.PtySource("/dev/null"), 20, 5)
    return display.ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))


def desktop_display():
    return vncproxy.DesktopDisplay(32, 16, upstream=None)


DISPLAYS = [console_display, desktop_display]


@pytest.mark.parametrize("make", DISPLAYS)
def test_each_display_is_a_display(make):
    assert isinstance(make(), display.Display)


@pytest.mark.parametrize("make", DISPLAYS)
@pytest.mark.parametrize("method", METHODS)
def test_each_method_takes_what_the_protocol_says(make, method):
    wanted = inspect.signature(getattr(display.Display, method))
    assert inspect.signature(getattr(type(make()), method)) == wanted


@pytest.mark.parametrize("make", DISPLAYS)
def test_members_have_the_protocols_types(make):
    shown = make()
    width, height = shown.size
    assert width > 0 and height > 0
    assert isinstance(shown.plans, encoders.SharedPlans)
    assert isinstance(shown.listeners, set)
    assert shown.cursor is None
    assert shown.cut_text == (0, "")
    assert shown.bells == 0


def test_something_missing_a_member_is_no_display():
    class NoCursor:
        size, plans, listeners, cut_text, bells = (1, 1), None, set(), (0, ""), 0

        def changes(self, token, copy_rect=True): ...
        def key(self, keysym, down, modifiers): ...
        def pointer(self, button_mask, x, y, hand): ...
        def paste(self, hand): ...
        def clipboard(self, text): ...
        def resize(self, width, height, answer): ...

    assert not isinstance(NoCursor(), display.Display)


@pytest.mark.parametrize("make", DISPLAYS)
def test_a_new_viewer_gets_everything_and_an_up_to_date_one_nothing(make):
    shown = make()
    changes = shown.changes(None)
    assert changes.full and changes.tiles[0][2].size == shown.size
    assert shown.changes(changes.token) is None
