"""A guest desktop of 16 M pixels of noise and Raw viewers that read it, for tests and a number.

`NoiseGuest` is a scripted guest server (tests/fakeguest.py) whose one update paints a
4096x4096 framebuffer with random pixels, so no encoding can make it small.  `RawReader` is a
viewer that asks for Raw and reads every byte as it comes, in a thread, one whole frame after
another: the kind of viewer vncterm must never drop, however big the desktop.

Run as a program it measures vncterm's peak resident memory (VmHWM) with N such viewers on
one frame of that desktop:

    python tests/bigdesktop.py [--viewers 8] [--size 4096x4096] [--checkout DIR]

`--checkout` runs another checkout's vncterm.py (to compare before and after a change).
"""

import argparse
import os
import socket
import struct
import threading
from pathlib import Path

import fakeguest
import peers

RAW, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, LAST_RECT = 0, -223, -308, -224
NOISE_SIZE = (4096, 4096)


class NoiseGuest(fakeguest.FakeGuest):
    """A scripted guest whose framebuffer is noise, painted in one Raw update."""

    def __init__(self, port, size=NOISE_SIZE):
        super().__init__(port, *size)

    def paint_noise(self, marker=0, colour=(0, 0, 0)):
        """One whole frame of noise, with a solid marker x marker block of colour top left."""
        width, height = self.width, self.height
        pixels = bytearray(os.urandom(width * height * 4))
        red, green, blue = colour
        for row in range(marker):
            start = row * width * 4
            pixels[start : start + marker * 4] = bytes([blue, green, red, 0]) * marker
        self.send_update(self.rect(0, 0, width, height, RAW, bytes(pixels)))


class RawReader:
    """A viewer that asks for Raw and reads promptly, counting the whole frames it gets."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.frames = 0
        self.error = None
        self.sock.recv(12)
        self.sock.sendall(b"RFB 003.008\n")
        count = self.recv(1)[0]
        self.recv(count)
        self.sock.sendall(b"\x01")
        self.recv(4)
        self.sock.sendall(b"\x01")
        self.width, self.height = struct.unpack(">HH", self.recv(4))
        self.recv(16)
        self.recv(struct.unpack(">I", self.recv(4))[0])
        encodings = (RAW, DESKTOP_SIZE)
        self.sock.sendall(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        self.request(incremental=False)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def recv(self, size):
        return peers.recv_exactly(self.sock, size, "vncterm")

    def request(self, incremental):
        self.sock.sendall(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    def _read(self):
        try:
            while True:
                self._read_message()
        except OSError as error:
            self.error = error

    def _read_message(self):
        kind = self.recv(1)[0]
        if kind == 3:
            self.recv(3)
            self.recv(struct.unpack(">I", self.recv(4))[0])
            return
        if kind == 2:
            return
        assert kind == 0, f"server message {kind}"
        (count,) = struct.unpack(">xH", self.recv(3))
        area = 0
        for _ in range(count):
            x, y, width, height, encoding = struct.unpack(">HHHHi", self.recv(12))
            if encoding == DESKTOP_SIZE:
                self.width, self.height = width, height
            elif encoding == RAW:
                self._skip(width * height * 4)
                area += width * height
            else:
                raise AssertionError(f"encoding {encoding} from a Raw viewer's server")
        if area == self.width * self.height:
            self.frames += 1
        self.request(incremental=True)

    def _skip(self, size):
        while size:
            chunk = self.sock.recv(min(size, 1 << 20))
            if not chunk:
                raise ConnectionError("vncterm closed the connection")
            size -= len(chunk)

    def connected(self):
        return self.thread.is_alive()

    def close(self):
        self.sock.close()
        self.thread.join(10)


def peak_rss_kib(pid):
    """VmHWM of a process, in KiB: the most memory it has held resident."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=8)
    parser.add_argument("--size", default="4096x4096")
    parser.add_argument("--checkout", type=Path, default=peers.REPO)
    args = parser.parse_args()
    size = tuple(map(int, args.size.split("x")))
    peers.REPO = args.checkout.resolve()
    folder = peers.ARTIFACTS / "bigdesktop"
    folder.mkdir(parents=True, exist_ok=True)
    server = peers.VncTerm("sleep 600", folder / "vncterm.log", options=("--verbose",))
    try:
        before = peak_rss_kib(server.proc.pid)
        guest = NoiseGuest(reverse_port(server), size)
        guest.updates_requested.wait(10)
        guest.paint_noise()
        readers = [RawReader(server.port) for _ in range(args.viewers)]
        peers.wait_until(lambda: all(r.frames or not r.connected() for r in readers), 300)
        connected = sum(r.connected() for r in readers)
        framed = sum(r.frames > 0 for r in readers)
        peak = peak_rss_kib(server.proc.pid)
        print(f"{args.viewers} Raw viewers, {size[0]}x{size[1]} noise desktop, "
              f"{args.checkout}: peak RSS {before / 1024:.0f} MiB before the guest, "
              f"{peak / 1024:.0f} MiB at peak; {framed} got a whole frame, "
              f"{connected} still connected")
        for reader in readers:
            reader.close()
        guest.close()
    finally:
        server.stop()


def reverse_port(server):
    """The reverse port vncterm printed before its listening line."""
    for line in server.output:
        if line.startswith("vncterm: guest desktops connect to 127.0.0.1:"):
            return int(line.rsplit(":", 1)[1])
    raise AssertionError(f"no reverse port\n{server.report()}")


if __name__ == "__main__":
    main()
