"""Parsers for command-line values that more than one module's options take.

Each module that adds options (auth.py, vncproxy.py, web.py, service.py, vncterm.py) keeps its
own `add_arguments`; the `type=` functions that two of them need live here, so that neither has
to import the other for them.  Each raises argparse.ArgumentTypeError, which argparse turns
into a usage message naming the option.
"""

from __future__ import annotations

import argparse


def port_number(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return int(text)


def address(text: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 host in brackets; the port may not be 0."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
