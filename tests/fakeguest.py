"""A scripted guest VNC server for proxy tests: well-behaved by default, hostile on request.

It plays the server side of RFB 3.x on one socket (it dials vncterm's reverse port, as
`vncconfig -connect` does), paints its framebuffer a solid colour in Raw, records the client
messages it receives, and lets a test push any bytes it likes afterwards: a bad rectangle, a
truncated message, a flood.  It is written with `struct` from RFC 6143, not with our code.
"""

import socket
import struct
import threading

import peers

RAW, COPY_RECT, DESKTOP_SIZE, CURSOR = 0, 1, -223, -239


class FakeGuest:
    def __init__(self, port, width=320, height=200, colour=(0, 200, 0),
                 version=b"RFB 003.008\n", security=(1,)):
        self.width, self.height, self.colour = width, height, colour
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(version)
        self.client_version = self.recv(12)
        minor = int(version[8:11])
        if minor >= 7:
            self.sock.sendall(bytes([len(security), *security]))
            assert self.recv(1)[0] in security
            if minor >= 8:
                self.sock.sendall(b"\0\0\0\0")
        else:
            self.sock.sendall(struct.pack(">I", security[0]))
        self.shared = self.recv(1)[0]
        pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        name = b"guest"
        self.sock.sendall(struct.pack(">HH", width, height) + pixel_format
                          + struct.pack(">I", len(name)) + name)
        self.received = bytearray()
        self.updates_requested = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def recv(self, size):
        return peers.recv_exactly(self.sock, size, "proxy")

    def _read(self):
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
                if b"\x03" in chunk:
                    self.updates_requested.set()
        except OSError:
            pass

    def messages(self):
        """(type, whole message) of every complete client message received so far."""
        messages, data, offset = [], bytes(self.received), 0
        sizes = {0: 20, 3: 10, 4: 8, 5: 6, 255: 12}
        while offset < len(data):
            kind = data[offset]
            if kind == 2 and offset + 4 <= len(data):
                size = 4 + 4 * struct.unpack_from(">H", data, offset + 2)[0]
            elif kind == 6 and offset + 8 <= len(data):
                size = 8 + struct.unpack_from(">I", data, offset + 4)[0]
            elif kind in sizes:
                size = sizes[kind]
            elif kind in (2, 6):
                break
            else:
                raise AssertionError(f"unexpected client message {kind}")
            if offset + size > len(data):
                break
            messages.append((kind, data[offset : offset + size]))
            offset += size
        return messages

    def key_events(self):
        """(down, keysym) of every KeyEvent received."""
        return [(bool(message[1]), struct.unpack_from(">I", message, 4)[0])
                for kind, message in self.messages() if kind == 4]

    def scancode_events(self):
        """(down, keysym, keycode) of every QEMU Extended Key Event received."""
        return [(bool(struct.unpack_from(">H", message, 2)[0]),
                 *struct.unpack_from(">II", message, 4))
                for kind, message in self.messages() if kind == 255]

    def pointer_events(self):
        """(button_mask, x, y) of every PointerEvent received."""
        return [struct.unpack_from(">BHH", message, 1)
                for kind, message in self.messages() if kind == 5]

    def cut_texts(self):
        """The text of every ClientCutText received."""
        return [message[8:] for kind, message in self.messages() if kind == 6]

    def rect(self, x, y, width, height, encoding, payload=b""):
        return struct.pack(">HHHHi", x, y, width, height, encoding) + payload

    def send_update(self, *rects):
        self.sock.sendall(struct.pack(">BxH", 0, len(rects)) + b"".join(rects))

    def raw(self, x, y, width, height, colour):
        red, green, blue = colour
        return self.rect(x, y, width, height, RAW, bytes([blue, green, red, 0]) * width * height)

    def paint(self, colour=None):
        """One update covering the whole framebuffer in one colour."""
        self.colour = colour or self.colour
        self.send_update(self.raw(0, 0, self.width, self.height, self.colour))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
