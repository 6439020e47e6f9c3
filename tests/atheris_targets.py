"""Coverage-guided fuzzing with atheris (libFuzzer for Python): run as a script, one target.

    python tests/atheris_targets.py TARGET [libFuzzer options, e.g. -runs=20000]

Hypothesis (test_fuzz.py) builds inputs from the protocol's grammar; libFuzzer instead mutates
bytes towards code it has not reached yet, and finds the odd branch a grammar never thought
of.  The properties are the same as there: a peer's mistakes end in rfb.ProtocolError, nothing
else escapes, and what is decoded stays inside the framebuffer.  Any other exception is a
crash: libFuzzer prints it, writes the input to crash-* in the working folder and exits
non-zero, which test_fuzz.py turns into a failure.

    client      rfb.ClientReader: what a viewer sends after the handshake
    guest       rfbclient.ServerReader drawn into a vncproxy.DesktopDisplay: what a guest sends
    console     console.Console.feed, take_frame and render.Renderer.apply: guest output
"""

import sys
import types
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    import console
    import render
    import rfb
    import rfbclient
    import vncproxy

FB = 64


def client(data: bytes) -> None:
    """The first byte's low bit says whether the Extended Clipboard was offered."""
    reader = rfb.ClientReader()
    reader.extended_clipboard = bool(data[:1]) and bool(data[0] & 1)
    try:
        reader.feed(data[1:])
        while reader.next_message() is not None:
            pass
    except rfb.ProtocolError:
        pass


def guest(data: bytes) -> None:
    reader = rfbclient.ServerReader(FB, FB)
    display = vncproxy.DesktopDisplay(FB, FB, upstream=types.SimpleNamespace(send=len))
    try:
        reader.feed(data)
        while (event := reader.next_event()) is not None:
            if isinstance(event, rfbclient.RawRows):
                rows = len(event.data) // (4 * event.width)
                width, height = display.size
                assert event.x + event.width <= width and event.y + rows <= height
            display.apply(event)
    except rfb.ProtocolError:
        pass


GLYPHS = render.Glyphs(render.load_font(None)[0])
TERMINAL = console.Console(types.SimpleNamespace(name="fuzz"), 20, 6)
RENDERER = render.Renderer(GLYPHS, 20, 6)


def console_output(data: bytes) -> None:
    TERMINAL.feed(data)
    RENDERER.apply(TERMINAL.take_frame())
    assert RENDERER.image.size == (20 * GLYPHS.cell[0], 6 * GLYPHS.cell[1])


TARGETS = {"client": client, "guest": guest, "console": console_output}

if __name__ == "__main__":
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[sys.argv[1]])
    atheris.Fuzz()
