"""table.py: the benchmark's results as one table, each figure beside the peer's.

One row per figure: the workload, what is measured, vncterm's median, the peer's median
(`servers.PEER`), their ratio, and the goal with whether it was met.  Each workload has one
function that adds its rows; a workload that did not run adds none.
"""

from __future__ import annotations

import statistics

from host import DOMAINS, PROXMOX_MB
from servers import PEER


def median(runs, key):
    """The median of one figure over repetitions."""
    return statistics.median(run[key] for run in runs)


class Table:
    """Rows of: workload, figure, vncterm, peer, ratio, goal, met."""

    def __init__(self) -> None:
        self.rows = []

    def add(self, workload, figure, ours, peer=None, goal="", met=None, ratio=True) -> None:
        ratio = ours / peer if ratio and isinstance(peer, (int, float)) and peer else None
        self.rows.append({"workload": workload, "figure": figure, "vncterm": ours, "peer": peer,
                          "ratio": ratio, "goal": goal, "met": met})

    def text(self) -> str:
        header = ("workload", "figure", "vncterm", PEER, "ratio", "goal", "met")
        lines = [[row["workload"], row["figure"], number(row["vncterm"]), number(row["peer"]),
                  number(row["ratio"], ratio=True), row["goal"],
                  {True: "yes", False: "NO", None: ""}[row["met"]]] for row in self.rows]
        widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(7)]
        rule = ["-" * width for width in widths]
        return "\n".join("  ".join(str(cell).ljust(width) for cell, width in
                                   zip(cells, widths, strict=True)).rstrip()
                         for cells in [header, rule, *lines])


def number(value, ratio: bool = False) -> str:
    """A figure as the table shows it."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if ratio:
        return f"{value:.2f}x"
    if abs(value) >= 10000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def build_table(results: dict) -> Table:
    """The table of every workload that ran."""
    table = Table()
    for name, add_rows in TABLE_ROWS.items():
        if name in results:
            add_rows(table, results[name])
    return table


def echo_rows(table: Table, results: dict) -> None:
    ours, peer = results["vncterm"], results[PEER]
    table.add("1 key echo", "p50 ms", ours["p50"], peer["p50"], "ratio <= 0.15",
              ours["p50"] <= 0.15 * peer["p50"])
    for figure in ("p90", "max"):
        table.add("1 key echo", f"{figure} ms", ours[figure], peer[figure])


def flood_rows(table: Table, results: dict) -> None:
    for script, title in (("seq", "2 flood seq 1 200000"), ("listing", "2 flood ls -lR")):
        ours, peer = results["vncterm"][script], results[PEER][script]
        seconds, peer_seconds = median(ours, "seconds"), median(peer, "seconds")
        data, peer_data = median(ours, "bytes"), median(peer, "bytes")
        table.add(title, "settle s", seconds, peer_seconds, "ratio <= 1",
                  seconds <= peer_seconds)
        table.add(title, "bytes", data, peer_data, "ratio <= 0.5", data <= 0.5 * peer_data)
        table.add(title, "updates", median(ours, "updates"), median(peer, "updates"))
        table.add(title, "server CPU s", median(ours, "cpu"), median(peer, "cpu"))
        table.add(title, "final screen verified", verified(ours), verified(peer))


def verified(runs) -> str:
    return "yes" if all(run["verified"] for run in runs) else "NO"


def no_viewer_rows(table: Table, results: dict) -> None:
    ours, peer = results["vncterm"], results[PEER]
    cpu, peer_cpu = median(ours, "cpu"), median(peer, "cpu")
    table.add("3 20 MB, no viewer", "server CPU s", cpu, peer_cpu, "ratio <= 1", cpu <= peer_cpu)
    rate = median(ours, "mb_per_s")
    table.add("3 20 MB, no viewer", "ingest MB/s", rate, median(peer, "mb_per_s"), ">= 5 MB/s",
              rate >= 5)


def screen_rows(table: Table, results: dict) -> None:
    for name, size in results["vncterm"].items():
        goal = name.startswith(("Tight", "ZRLE"))
        table.add("4 full screen", f"{name} bytes", size, results[PEER][name],
                  "<= 8 KB" if goal else "", size <= 8192 if goal else None)


def proxy_rows(table: Table, results: dict) -> None:
    for name in ("xterm flood", "image"):
        proxied, direct = results[name]["proxy"], results[name]["direct"]
        rate, direct_rate = median(proxied, "updates_per_s"), median(direct, "updates_per_s")
        table.add(f"5 proxy: {name}", "updates/s (proxy|direct)", rate, direct_rate,
                  "ratio >= 0.8", rate >= 0.8 * direct_rate)
        table.add(f"5 proxy: {name}", "MB/s (proxy|direct)", median(proxied, "mb_per_s"),
                  median(direct, "mb_per_s"))
    proxied, direct = results["echo"]["proxy"]["p50"], results["echo"]["direct"]["p50"]
    table.add("5 proxy: key echo", "p50 ms (proxy|direct)", proxied, direct,
              f"{proxied - direct:+.2f} ms <= +2 ms", proxied - direct <= 2)
    for name, milliseconds in results["switch"].items():
        table.add("5 proxy: VT switch", f"{name} p50 ms", milliseconds)


def scale_rows(table: Table, results: dict) -> None:
    ours, peer = results["vncterm"], results[PEER]
    many, one = median(ours["many"], "seconds"), median(ours["one"], "seconds")
    peer_many, peer_one = median(peer["many"], "seconds"), median(peer["one"], "seconds")
    title = "6 scale, seq flood"
    table.add(title, "50 viewers settle s", many, peer_many)
    table.add(title, "1 viewer settle s", one, peer_one)
    table.add(title, "50 / 1 viewers", many / one, peer_many / peer_one, "vncterm <= 2",
              many <= 2 * one, ratio=False)
    table.add(title, "peak RSS MB, 50 viewers", median(ours["many"], "peak_rss"),
              median(peer["many"], "peak_rss"))


def idle_rows(table: Table, results: dict) -> None:
    rss = results["vncterm"]["rss"]
    table.add("7 idle", "RSS MB", rss, results[PEER]["rss"], "<= 40 MB", rss <= 40)


def host_rows(table: Table, results: dict) -> None:
    """--domain all against a process per domain (in the peer column) and Proxmox's 6.8 MB."""
    title = f"8 host, {DOMAINS} domains (peer: {DOMAINS} x --domain N)"
    per_process = results["one_process"]
    table.add(title, "total RSS MB", results["rss_all"], DOMAINS * per_process,
              f"Proxmox: {DOMAINS * PROXMOX_MB:.0f} MB")
    table.add(title, "RSS MB per extra domain", results["per_domain"], per_process,
              f"<= 2 MB (Proxmox {PROXMOX_MB})", results["per_domain"] <= 2)
    table.add(title, "threads", results["threads"], DOMAINS * results["one_process_threads"])
    table.add(title, "xenstore-watch processes", results["watches"], DOMAINS, "constant",
              results["watches"] == 3, ratio=False)
    table.add(title, "idle CPU s per s", results["idle_cpu"], None, "none measurable")
    table.add(title, "introduce to served port s", max(results["introduce"]), None, "<= 2 s",
              max(results["introduce"]) <= 2)


def hvm_rows(table: Table, results: dict) -> None:
    vga, fan_out = results["vga"], results["fan_out"]
    proxied, direct = vga["proxy"], vga["direct"]
    rate, direct_rate = median(proxied, "updates_per_s"), median(direct, "updates_per_s")
    table.add("9 QEMU VGA flood", "updates/s (proxy|direct)", rate, direct_rate,
              "ratio >= 0.8", rate >= 0.8 * direct_rate)
    table.add("9 QEMU VGA flood", "MB/s (proxy|direct)", median(proxied, "mb_per_s"),
              median(direct, "mb_per_s"))
    proxied, direct = vga["echo"]["proxy"]["p50"], vga["echo"]["direct"]["p50"]
    table.add("9 QEMU VGA key echo", "p50 ms (proxy|direct)", proxied, direct,
              f"{proxied - direct:+.2f} ms <= +2 ms", proxied - direct <= 2)
    proxy, direct = fan_out["proxy"], fan_out["direct"]
    rate, direct_rate = median(proxy, "updates_per_s"), median(direct, "updates_per_s")
    table.add("10 fan-out, 10 viewers", "updates/s per viewer (proxy|direct)", rate, direct_rate,
              "ratio >= 0.8", rate >= 0.8 * direct_rate)
    table.add("10 fan-out, 10 viewers", "MB/s per viewer (proxy|direct)",
              median(proxy, "mb_per_s"), median(direct, "mb_per_s"))
    table.add("10 fan-out, 10 viewers", "proxy CPU per viewer (cores)",
              median(proxy, "cpu_per_viewer"))


TABLE_ROWS = {"echo": echo_rows, "floods": flood_rows, "no_viewer": no_viewer_rows,
              "screen": screen_rows, "proxy": proxy_rows, "scale": scale_rows, "idle": idle_rows,
              "host": host_rows, "hvm": hvm_rows}
