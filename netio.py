"""Two small pieces of blocking and non-blocking socket plumbing that every thread here shares.

`Wakeup` is the self-pipe trick: a thread that sleeps in `selectors` registers the read end, and
any other thread calls `poke()` to wake it.  A socketpair rather than `os.pipe` so that it is
one kind of object on every platform, and its write end is non-blocking, so a poke never blocks
(a full buffer already means "wake up").  Many pokes before the sleeper looks collapse into one
wake-up: the sleeper drains the pipe and then looks at the shared state, which is what counts.

`recv_exactly` reads one fixed-size piece of a handshake under an overall deadline, the way a
straight-line handshake wants it (RFC 6143 §7.1-7.3 are all fixed sizes or length-prefixed).
A peer that closes or runs past the deadline raises `PeerGone`, which callers log as a reason,
not as a bug.
"""

from __future__ import annotations

import contextlib
import socket
import time


class PeerGone(Exception):
    """The peer closed the connection, or stopped answering before a deadline."""


class Wakeup:
    """A socketpair that other threads poke to wake a thread waiting in a selector."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        self._read.setblocking(False)

    def fileno(self) -> int:
        """The end to register with a selector for EVENT_READ."""
        return self._read.fileno()

    def poke(self) -> None:
        """Wake the waiting thread; safe from any thread, never blocks, never raises."""
        with contextlib.suppress(OSError):
            self._write.send(b"!")

    def drain(self) -> None:
        """Swallow the pokes so far; call it after the selector reported this end readable."""
        with contextlib.suppress(BlockingIOError):
            while self._read.recv(4096):
                pass

    def close(self) -> None:
        self._read.close()
        self._write.close()


def recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """`size` bytes from a blocking socket, all of them by `deadline` (a time.monotonic())."""
    data = bytearray()
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerGone("no answer before the handshake's deadline")
        sock.settimeout(left)
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            raise PeerGone("no answer before the handshake's deadline") from None
        if not chunk:
            raise PeerGone("closed during the handshake")
        data += chunk
    return bytes(data)
