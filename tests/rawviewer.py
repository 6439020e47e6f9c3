"""A small blocking RFB client for protocol edge cases in tests.

It is written from RFC 6143 with `struct`, not with rfb.py, so it does not share the server's
mistakes.  It decodes Raw (32-bit little-endian 888, the server's default format) and
CopyRect into a Pillow image, follows DesktopSize and ExtendedDesktopSize, and counts bells.
Real viewers prove the features; this client probes the corners they never visit.

`SecureClient` adds the security step: VNC authentication with its own DES key schedule and
VeNCrypt with the standard library's TLS, so it shares no code with auth.py either.
"""

import socket
import ssl
import struct

from Crypto.Cipher import DES
from PIL import Image

import peers

RAW, COPY_RECT, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE = 0, 1, -223, -308
POINTER_TYPE_CHANGE, QEMU_EXTENDED_KEY_EVENT, LED_STATE = -257, -258, -261
VMWARE_LED_STATE = 0x574D5668
VENCRYPT, X509_NONE, X509_VNC = 19, 260, 261


class Client:
    def __init__(self, port, version=b"RFB 003.008\n", shared=True, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.handshake(version, shared)
        except BaseException:
            self.sock.close()
            raise
        self.image = Image.new("RGB", (self.width, self.height))
        self.bells = 0
        self.cut_texts = []
        self.rects = []
        self.resizes = []
        self.leds = []

    def handshake(self, version, shared):
        """RFC 6143 §7.1-7.3 as the viewer; the security step is choose() and authenticate()."""
        self.server_version = self.recv(12)
        self.sock.sendall(version)
        minor = int(version[8:11])
        if minor >= 7:
            count = self.recv(1)[0]
            if count == 0:
                raise ConnectionRefusedError(self.reason())
            self.types = list(self.recv(count))
            chosen = self.choose(self.types)
            self.sock.sendall(bytes([chosen]))
        else:
            (chosen,) = struct.unpack(">I", self.recv(4))
            if chosen == 0:
                raise ConnectionRefusedError(self.reason())
            self.types = [chosen]
        if self.authenticate(chosen) != 1 or minor >= 8:
            (result,) = struct.unpack(">I", self.recv(4))
            if result != 0:
                raise PermissionError(self.reason() if minor >= 8 else "refused")
        self.sock.sendall(b"\x01" if shared else b"\x00")
        self.width, self.height = struct.unpack(">HH", self.recv(4))
        self.pixel_format = self.recv(16)
        (length,) = struct.unpack(">I", self.recv(4))
        self.name = self.recv(length).decode()

    def choose(self, types):
        """The security type to ask for: None, which this viewer needs the server to offer."""
        assert 1 in types, types
        return 1

    def authenticate(self, chosen):
        """Run the chosen security type; return the method whose SecurityResult follows."""
        assert chosen == 1, chosen
        return chosen

    def recv(self, size):
        return peers.recv_exactly(self.sock, size, "server")

    def reason(self):
        (length,) = struct.unpack(">I", self.recv(4))
        return self.recv(length).decode()

    def send(self, data):
        self.sock.sendall(data)

    def set_encodings(self, *encodings):
        self.send(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))

    def request(self, incremental=True, x=0, y=0, width=None, height=None):
        width = self.width if width is None else width
        height = self.height if height is None else height
        self.send(struct.pack(">BBHHHH", 3, incremental, x, y, width, height))

    def key(self, keysym, down=True):
        self.send(struct.pack(">BBxxI", 4, down, keysym))

    def scancode(self, keysym, keycode, down=True):
        """A QEMU Extended Key Event."""
        self.send(struct.pack(">BBHII", 255, 0, down, keysym, keycode))

    def pointer(self, button_mask, x, y):
        self.send(struct.pack(">BBHH", 5, button_mask, x, y))

    def type(self, text):
        for character in text:
            self.key(ord(character), True)
            self.key(ord(character), False)

    def read_update(self):
        """Read messages until one FramebufferUpdate has been applied; return its rects."""
        while True:
            kind = self.recv(1)[0]
            if kind == 2:
                self.bells += 1
            elif kind == 3:
                (length,) = struct.unpack(">3xI", self.recv(7))
                self.cut_texts.append(self.recv(length))
            elif kind == 0:
                (count,) = struct.unpack(">xH", self.recv(3))
                rects = [self.read_rect() for _ in range(count)]
                self.rects += rects
                return rects
            else:
                raise AssertionError(f"unexpected server message {kind}")

    def read_rect(self):
        x, y, width, height, encoding = struct.unpack(">HHHHi", self.recv(12))
        if encoding == RAW:
            data = self.recv(width * height * 4)
            self.image.paste(Image.frombytes("RGB", (width, height), data, "raw", "BGRX"), (x, y))
        elif encoding == COPY_RECT:
            src_x, src_y = struct.unpack(">HH", self.recv(4))
            region = self.image.crop((src_x, src_y, src_x + width, src_y + height))
            self.image.paste(region, (x, y))
        elif encoding == DESKTOP_SIZE:
            self.resize(width, height)
        elif encoding == EXTENDED_DESKTOP_SIZE:
            count = self.recv(4)[0]
            self.recv(16 * count)
            self.resizes.append((x, y, width, height))
            self.resize(width, height)
        elif encoding == LED_STATE:
            self.leds.append(self.recv(1)[0])
        elif encoding == VMWARE_LED_STATE:
            self.leds.append(struct.unpack(">I", self.recv(4))[0])
        elif encoding not in (POINTER_TYPE_CHANGE, QEMU_EXTENDED_KEY_EVENT):
            raise AssertionError(f"unexpected encoding {encoding}")
        return (x, y, width, height, encoding)

    def resize(self, width, height):
        if (width, height) != (self.width, self.height):
            self.width, self.height = width, height
            self.image = Image.new("RGB", (width, height))

    def close(self):
        self.sock.close()


def vnc_response(challenge, password):
    """DES of the challenge, keyed by the password with each byte's bits mirrored (RFC 6143)."""
    key = bytes(sum(((byte >> bit) & 1) << (7 - bit) for bit in range(8))
                for byte in password[:8].ljust(8, b"\0"))
    return DES.new(key, DES.MODE_ECB).encrypt(challenge)


class SecureClient(Client):
    """rawviewer.Client with the security step: None, VNC authentication, VeNCrypt X509*."""

    def __init__(self, port, password=None, tls=None, version=b"RFB 003.008\n", shared=True,
                 subtype=None, timeout=10.0):
        self.password, self.tls, self.subtype = password, tls, subtype
        super().__init__(port, version, shared, timeout)

    def choose(self, types):
        return VENCRYPT if self.tls and VENCRYPT in types else types[-1]

    def authenticate(self, chosen):
        method = self.vencrypt() if chosen == VENCRYPT else chosen
        if method in (2, X509_VNC):
            self.sock.sendall(vnc_response(self.recv(16), self.password or b""))
        return method

    def vencrypt(self):
        """VeNCrypt 0.2 up to a finished TLS handshake; return the subtype chosen."""
        assert self.recv(2) == b"\x00\x02"
        self.sock.sendall(b"\x00\x02")
        assert self.recv(1) == b"\x00"
        count = self.recv(1)[0]
        self.subtypes = list(struct.unpack(f">{count}I", self.recv(4 * count)))
        chosen = self.subtype or self.subtypes[0]
        self.sock.sendall(struct.pack(">I", chosen))
        assert self.recv(1) == b"\x01"
        self.sock = self.tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        return chosen


def client_tls(ca):
    """A viewer's TLS context that trusts the CA in the PEM file `ca`."""
    return ssl.create_default_context(cafile=str(ca))


def set_desktop_size(client, width, height):
    screen = struct.pack(">IHHHHI", 0, 0, 0, width, height, 0)
    client.send(struct.pack(">BxHHBx", 251, width, height, 1) + screen)


def resize_reply(client):
    """Request updates until an ExtendedDesktopSize arrives; return (reason, status, w, h)."""
    while True:
        client.request(incremental=True)
        for x, y, width, height, encoding in client.read_update():
            if encoding == EXTENDED_DESKTOP_SIZE:
                return x, y, width, height
