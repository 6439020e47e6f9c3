"""bench/consoles.py: one more console, its scrollback full and nobody watching, stays small.

The figure issue 13 sets is at most 2 MB per extra console, 1 MB excellent.  This runs the
benchmark's own measurement (fresh processes with 1 and 11 consoles, each fed a 1,200-line
coloured log through a pty) and holds it to 1 MiB; it measured 3.5 MiB before the scrollback
was compact, the picture lazy and malloc's memory shared and returned, and 0.7 MiB after.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import consoles  # noqa: E402  (bench/ is not a package; the line above finds it)


def test_an_extra_console_costs_less_than_a_mebibyte():
    one = consoles.measure_in_process(1, viewer=True)
    eleven = consoles.measure_in_process(11, viewer=True)
    assert eleven["threads"] - one["threads"] == 10
    assert (eleven["rss_kib"] - one["rss_kib"]) / 10 < 1024
