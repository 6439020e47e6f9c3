"""Console sources: where a console's bytes come from and where its keys go.

A console reads from one source.  Each kind here is a small class with the same few members,
which console.py's reader thread is written against (xen.py's `DomainSource` is one more):

* `name`, for status lines and logs, and `restarts`: whether the reader reopens the source
  once a second after it closed or failed to open, or gives up and closes the console;
* `open()` and `close()`, each callable again after the other; `open()` raises OSError when
  the source is not there (yet);
* `fileno()`: an fd to wait on in a selector, or None if the reader must poll;
* `read()`: what is there now, None if nothing, b"" once the far end hung up (for good or
  until the next `open()`);
* `write(data)`: how many bytes it took, without blocking (0 when it is full);
* optionally `watch_fileno()`: an fd that becomes readable when it is worth calling `open()`
  again without waiting out the second (xen.py's xenstore watch).

The kinds.  `PtySource` opens an existing pty or tty, such as the pty Xen's xenconsoled
writes to xenstore for a guest's console, and puts it in raw mode (the guest's own tty does
the line editing).  `CommandSource` starts a command in a new pty that it owns, with TERM and
the window size of the console, and takes the command's whole process group down on close.
It alone has `resize(columns, lines)`: a viewer may resize its console, and the command
hears of it as a program in an xterm does (TIOCSWINSZ on the pty, so SIGWINCH).
`SerialSource` is a serial port or any URL pyserial's `serial_for_url` opens (socket://,
rfc2217://); pyserial is imported only when one is used.

A pty is read dry before the terminal parses anything: `FdSource.read` takes up to
`READ_LIMIT` in one go, so that a flood arrives in big runs the fast paths in terminal.py can
take whole, while a keystroke's echo, a few bytes, still goes through at once.  The limit
bounds what one read holds; console.py bounds how long its parse holds the console lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import signal
import struct
import subprocess
import termios
import tty

READ_LIMIT = 256 * 1024


class FdSource:
    """A source backed by one non-blocking file descriptor (a pty)."""

    fd: int | None = None
    restarts = True

    def fileno(self) -> int | None:
        return self.fd

    def read(self) -> bytes | None:
        """What is there (up to READ_LIMIT): None if nothing yet, b"" once the other end hung up."""
        chunks, size = [], 0
        while size < READ_LIMIT:
            data = self._read_once()
            if not data:
                if data == b"" and not chunks:
                    return b""
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks) or None

    def _read_once(self) -> bytes | None:
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno == errno.EIO:
                return b""
            raise

    def write(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PtySource(FdSource):
    """An existing pty or tty, such as the guest console xenconsoled hands out."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        if os.isatty(self.fd):
            tty.setraw(self.fd, termios.TCSANOW)


class CommandSource(FdSource):
    """A command run in a new pty of its own, with TERM set and the window size of the console."""

    def __init__(self, command: str, columns: int, lines: int, restart: bool = False) -> None:
        self.argv = shlex.split(command)
        self.name = command
        self.size = (columns, lines)
        self.restarts = restart
        self.process: subprocess.Popen | None = None

    def open(self) -> None:
        master, slave = os.openpty()
        columns, lines = self.size
        _set_window_size(slave, columns, lines)
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(lines))
        try:
            self.process = subprocess.Popen(
                self.argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                start_new_session=True, preexec_fn=_take_controlling_terminal,
            )
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.fd = master

    def resize(self, columns: int, lines: int) -> None:
        """The console's new size: the running command's, and the next one's."""
        self.size = (columns, lines)
        if self.fd is not None:
            _set_window_size(self.fd, columns, lines)

    def close(self) -> None:
        super().close()
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGHUP)
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None


def _set_window_size(fd: int, columns: int, lines: int) -> None:
    """Set a pty's window size; the kernel sends SIGWINCH to its foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class SerialSource:
    """A serial port or anything pyserial's serial_for_url opens (socket://, rfc2217://)."""

    restarts = True

    def __init__(self, url: str, baud: int) -> None:
        self.url = url
        self.name = url
        self.baud = baud
        self.port = None

    def open(self) -> None:
        import serial

        try:
            self.port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0)
        except (serial.SerialException, ValueError) as error:
            raise OSError(str(error)) from error

    def fileno(self) -> int | None:
        try:
            return self.port.fileno()
        except (AttributeError, NotImplementedError):
            return None

    def read(self) -> bytes | None:
        import serial

        try:
            return self.port.read(max(1, self.port.in_waiting)) or None
        except (serial.SerialException, OSError):
            return b""

    def write(self, data: bytes) -> int:
        import serial

        try:
            return self.port.write(data) or 0
        except (serial.SerialException, OSError):
            return 0

    def close(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None
