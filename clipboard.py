"""The clipboard between two RFB peers, and what a paste types.

A `ClipboardLink` is one side's view of one connection's clipboard: a viewer's session holds
one towards its viewer, the guest link one towards the guest's server.  It decides the wire
form (RFC 6143 §7.5.6 and §7.6.4 cut text, or the Extended Clipboard of rfbproto, whose
messages rfb.py reads and writes) and remembers two texts: what the peer last gave us
(`received`) and what we last gave it (`offered`, served again when the peer asks).

Plain cut text is Latin-1, so what it cannot hold goes as `?`.  The Extended Clipboard carries
UTF-8, and is symmetric: each side sends its caps (the largest text it takes unasked), then
either provides text outright or notifies that it has some and lets the other side request
it.  We provide when the text fits the peer's limit and notify otherwise; we answer a notify
with a request at once, because a paste must not wait on the network.  Caps come first from
the server (the viewer listed the pseudo-encoding; `offer`), the client answers with its own.

Paste only on request: viewers send their clipboard on every copy made on their machine, and
a copy of `rm -rf /` in another window must not type itself into a root console, so the
viewer's text waits here until the person pastes.  `pasted` turns it into
what the console types: UTF-8, line ends as Return, and wrapped in xterm's bracketed-paste
marks when the program asked for them (mode 2004), with the marks taken out of the text so a
pasted `ESC[201~` cannot end the bracket early.

A `Hand` is what a display's pointer needs of one viewer: its modifiers, the buttons it held,
and its link, into which a console selection is copied (`copy`; the session sends `take()`).
Each viewer's link is used by that viewer's thread only; the guest's under the desktop's lock.

Trade-off: only the text format is spoken; RTF, HTML, images and files are not offered and
what a peer offers of them is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keymap
import rfb
from rfb import Clipboard

ACTIONS = Clipboard.REQUEST | Clipboard.PEEK | Clipboard.NOTIFY | Clipboard.PROVIDE
BRACKET_START, BRACKET_END = "\x1b[200~", "\x1b[201~"


class ClipboardLink:
    """One connection's clipboard, from our side of it.

    `plain` wraps Latin-1 bytes as this side's cut text message, `extended` wraps an Extended
    Clipboard body (rfb.server_cut_text and rfb.server_clipboard for a viewer, and rfbclient's
    client_ functions for the guest).
    """

    def __init__(self, plain: Callable[[bytes], bytes], extended: Callable[[bytes], bytes]):
        self.plain, self.extended = plain, extended
        self.speaks_extended = False
        self.sent_caps = False
        self.their_limit = 0
        self.received = ""
        self.offered = ""
        self.outgoing = b""

    def offer(self) -> bytes:
        """Our caps: from then on the peer may use the Extended Clipboard with us."""
        self.speaks_extended = self.sent_caps = True
        return self.extended(rfb.clipboard_caps(ACTIONS, rfb.CUT_TEXT_LIMIT))

    def receive_plain(self, data: bytes) -> None:
        """Plain cut text from the peer (Latin-1)."""
        self.received = normal_lines(data.decode("latin-1"))

    def receive(self, message: rfb.ExtendedClipboard) -> tuple[bytes, bool]:
        """An Extended Clipboard message from the peer: (our answer, whether `received` changed)."""
        action, text = message.action, bool(message.formats & Clipboard.TEXT)
        if action & Clipboard.CAPS:
            self.speaks_extended = True
            self.their_limit = message.sizes[0] if text else 0
            return (b"" if self.sent_caps else self.offer()), False
        if action == Clipboard.PEEK:
            formats = Clipboard.TEXT if self.offered else 0
            return self.extended(rfb.clipboard_action(Clipboard.NOTIFY, formats)), False
        if not text:
            return b"", False
        if action == Clipboard.REQUEST:
            return self.extended(rfb.clipboard_provide(self.offered)), False
        if action == Clipboard.NOTIFY:
            return self.extended(rfb.clipboard_action(Clipboard.REQUEST)), False
        self.received = normal_lines(message.text)
        return b"", True

    def give(self, text: str) -> bytes:
        """The message that hands `text` to the peer."""
        self.offered = text
        if not self.speaks_extended:
            return self.plain(rfb.latin1(text))
        if len(text.encode()) + 1 <= self.their_limit:
            return self.extended(rfb.clipboard_provide(text))
        return self.extended(rfb.clipboard_action(Clipboard.NOTIFY))


    def copy(self, text: str) -> None:
        """Queue `text` for the peer's clipboard; the owner sends `take()` when it can."""
        self.outgoing += self.give(text)

    def take(self) -> bytes:
        outgoing, self.outgoing = self.outgoing, b""
        return outgoing


@dataclass
class Hand:
    """What a display's pointer needs of one viewer: its modifiers, the buttons it held
    before this event, and its clipboard link (a console selection is copied into it)."""

    modifiers: keymap.Modifiers
    clipboard: ClipboardLink
    buttons: int = 0


def viewer_link() -> ClipboardLink:
    """The link a viewer's session keeps towards its viewer."""
    return ClipboardLink(rfb.server_cut_text, rfb.server_clipboard)


def normal_lines(text: str) -> str:
    """Line ends as LF, whichever a peer sent."""
    return text.replace("\r\n", "\n")


def pasted(text: str, bracketed: bool) -> bytes:
    """What a terminal program gets when `text` is pasted: Return for each line end."""
    typed = normal_lines(text).replace("\n", "\r")
    if not bracketed:
        return typed.encode()
    typed = typed.replace(BRACKET_START, "").replace(BRACKET_END, "")
    return (BRACKET_START + typed + BRACKET_END).encode()
