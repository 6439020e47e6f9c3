"""The benchmark still runs: it starts vncterm with the tests' own starter and reads it.

`make bench` is too slow and too heavy for `make test`, so nothing else would notice when a
change to tests/peers.py or to vncterm's startup lines breaks bench/benchmark.py. These two
tests run its command line and its first step against a real vncterm: start the console the
way every workload does, connect the benchmark's timing client, and see the text.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import benchmark  # noqa: E402  (bench/ is not a package; the line above finds it)
import client  # noqa: E402
import servers  # noqa: E402


def test_command_line_lists_the_workloads():
    result = subprocess.run([sys.executable, "bench/benchmark.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True)
    for workload in benchmark.WORKLOADS:
        assert workload in result.stdout


def test_timing_client_reads_vncterm():
    server = servers.VncTerm("sh -c 'printf hello; exec cat'")
    try:
        assert server.reverse_port
        viewer = servers.connect(server)
        viewer.settle()
        assert viewer.size == (servers.COLUMNS * 8, servers.ROWS * 16)
        assert viewer.image.getbbox() is not None
        assert viewer.seen_encodings <= {client.TIGHT, client.COPY_RECT, client.CURSOR}
        viewer.close()
    finally:
        server.stop()
