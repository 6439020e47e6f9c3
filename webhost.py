"""The browser page of a whole host: `--domain all --web PORT`.

What.  One web port for every domain: `/` is a page listing them (id, name, whether the
console is attached, whether a guest desktop is connected, a thumbnail of the console), each
entry opening that domain in noVNC; `/domains.json` is the same list for toolstacks and
dashboards; `/thumbnail/N.png` is domain N's console as a small PNG; every other path is
Debian's noVNC, and the WebSocket its page opens is relayed to the domain's own viewer port.
The page asks for the list again every few seconds, so it follows domains as they come and go.

How.  websockify's own request handler does the WebSocket and the files, in this process:
`Handler` is its `ProxyRequestHandler` with three extra paths, and `Tokens` is a token plugin
(websockify's `lookup(token)` interface) that routes `?token=domain-N` to domain N's port.
No WebSocket code is ours.  The server is the standard library's threading HTTP server, one
thread per browser connection, as websockify's own `--libserver` mode runs it.  Two of that
mode's habits are avoided: it moves the whole process into the web folder (`Handler` serves
noVNC's folder by path instead), and it keeps the connection's target on the shared server
object, which two browsers connecting at once would overwrite (`Handler` keeps it per
connection).  A thumbnail is rendered only when a browser asks for it, from the picture the
domain's viewers share (display.ConsoleDisplay), so a host nobody looks at renders nothing.

Trade-offs.  In-process, unlike web.py's websockify child: a thumbnail needs the console,
and the console is here.  The price: websockify must be importable by vncterm's Python
(Debian's python3-websockify is, for /usr/bin/python3), and its relay loop uses select(), so
a browser connection whose socket number passes 1023 fails (a host of a few hundred domains
with many browsers).  TLS (--web-cert) wraps each accepted connection, the handshake done in
that connection's thread.  Browsers reach viewer ports through loopback, as with `--web`, so
VNC authentication is noVNC's dialog, unchanged.
"""

from __future__ import annotations

import html
import io
import json
import logging
import socket
import socketserver
import ssl
import threading
import warnings
from http.server import HTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

log = logging.getLogger("vncterm.webhost")

THUMBNAIL_WIDTH = 320
TOKEN_PREFIX = "domain-"
REFRESH_SECONDS = 5


def domain_token(number: int) -> str:
    return f"{TOKEN_PREFIX}{number}"


def novnc_url(number: int) -> str:
    """noVNC's page, relative to ours, connecting at once to domain N through its token."""
    return f"vnc.html?autoconnect=1&path={quote(f'websockify?token={domain_token(number)}')}"


def listing(domains) -> list[dict]:
    """/domains.json: each served domain, with its noVNC and thumbnail URLs relative to /."""
    entries = []
    for slot in domains.served():
        entries.append({
            "id": slot.number, "name": slot.name, "port": slot.server.server_address[1],
            "url": novnc_url(slot.number), "thumbnail": f"thumbnail/{slot.number}.png",
            "console": not slot.server.console.console.status,
            "desktop": slot.server.desktop is not None})
    return entries


def thumbnail(slot) -> bytes:
    """Domain N's console now, scaled to THUMBNAIL_WIDTH, as PNG."""
    image = slot.server.console.snapshot()
    height = image.height * THUMBNAIL_WIDTH // image.width
    output = io.BytesIO()
    image.resize((THUMBNAIL_WIDTH, height)).save(output, "PNG")
    return output.getvalue()


class Tokens:
    """websockify's token plugin interface: `domain-N` -> domain N's viewer port."""

    def __init__(self, domains) -> None:
        self.domains = domains

    def lookup(self, token: str) -> tuple[str, int] | None:
        number = token.removeprefix(TOKEN_PREFIX)
        for slot in self.domains.served():
            if token.startswith(TOKEN_PREFIX) and str(slot.number) == number:
                host, port = slot.server.server_address[:2]
                return ("127.0.0.1" if host in ("", "0.0.0.0") else host), port
        return None


def handler_class(websocketproxy, novnc: Path):
    """websockify's ProxyRequestHandler, serving our three paths and noVNC's folder."""

    class Handler(websocketproxy.ProxyRequestHandler):
        def do_GET(self):
            path = urlsplit(self.path).path
            if self.headers.get("upgrade", "").lower() == "websocket":
                super().do_GET()
            elif path == "/":
                self.reply(page(socket.gethostname()), "text/html; charset=utf-8")
            elif path == "/domains.json":
                self.reply(json.dumps(listing(self.server.domains)).encode(),
                           "application/json")
            elif path.startswith("/thumbnail/") and path.endswith(".png"):
                slot = self.server.domains.slot(path[len("/thumbnail/"):-len(".png")])
                if slot is None:
                    self.send_error(404, "No such domain")
                else:
                    self.reply(thumbnail(slot), "image/png")
            else:
                super().do_GET()

        def reply(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def translate_path(self, path):
            self.directory = str(novnc)
            return super().translate_path(path)

        def validate_connection(self):
            self.target = self.get_target(self.server.token_plugin)

        def new_websocket_client(self):
            host, port = self.target
            try:
                target = websocketproxy.websockifyserver.WebSockifyServer.socket(
                    host, port, connect=True)
            except OSError as error:
                self.log_message("cannot reach %s:%s: %s", host, port, error)
                raise self.CClose(1011, "Failed to connect to downstream server") from None
            try:
                self.do_proxy(target)
            finally:
                target.close()

        def log_message(self, format, *args):
            log.info("browser %s: %s", self.client_address[0], format % args)

    return Handler


class HostPage(socketserver.ThreadingMixIn, HTTPServer):
    """The host's web port: the page, the list, thumbnails, noVNC and the relay."""

    daemon_threads = True

    def __init__(self, listener, domains, novnc: Path, tls: ssl.SSLContext | None) -> None:
        with warnings.catch_warnings():  # without numpy it says it is slower, on stderr
            warnings.simplefilter("ignore")
            from websockify import websocketproxy  # Debian's python3-websockify (see web.py)

        self.domains = domains
        self.tls = tls
        # What websockify's handler reads from its server.
        self.token_plugin = Tokens(domains)
        self.auth_plugin = None
        self.heartbeat = None
        self.file_only = True
        self.only_upgrade = False
        self.target_host = self.target_port = None
        self.wrap_cmd = self.unix_target = self.ssl_target = None
        self.logger = log
        self.EClose = websocketproxy.websockifyserver.WebSockifyServer.EClose
        super().__init__(listener.getsockname()[:2], handler_class(websocketproxy, novnc),
                         bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.thread = threading.Thread(target=self.serve_forever, name="host page", daemon=True)
        self.thread.start()

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def page(host: str) -> bytes:
    """The page: plain HTML and CSS; a few lines of script fetch /domains.json and redraw."""
    return (PAGE.replace("HOST", html.escape(host))
            .replace("REFRESH_MS", str(REFRESH_SECONDS * 1000)).encode())


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Consoles of HOST</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; padding: 1rem; background: #f4f4f4; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  ul { list-style: none; margin: 0; padding: 0; display: grid; gap: 1rem;
        grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); }
  li a { display: block; background: #fff; border-radius: 6px; padding: .6rem;
          color: inherit; text-decoration: none; box-shadow: 0 1px 3px #0003; }
  li a:hover, li a:focus { outline: 2px solid #2a6ad8; }
  img { width: 100%; height: auto; background: #000; display: block; border-radius: 3px; }
  .name { font-weight: 600; overflow-wrap: anywhere; }
  .state { font-size: .85rem; color: #555; }
  .empty { color: #555; }
</style>
</head>
<body>
<h1>Consoles of HOST</h1>
<ul id="domains"></ul>
<p class="empty" id="empty" hidden>No domain is running.</p>
<script>
function entry(domain) {
  const item = document.createElement("li");
  const link = item.appendChild(document.createElement("a"));
  link.href = domain.url;
  link.dataset.domain = domain.id;
  const picture = link.appendChild(document.createElement("img"));
  picture.src = domain.thumbnail + "?at=" + Date.now();
  picture.alt = "console of domain " + domain.id;
  const name = link.appendChild(document.createElement("div"));
  name.className = "name";
  name.textContent = domain.id + " " + (domain.name || "");
  const state = link.appendChild(document.createElement("div"));
  state.className = "state";
  state.textContent = (domain.console ? "console attached" : "console waiting") +
    (domain.desktop ? ", desktop connected" : "") + " \\u00b7 port " + domain.port;
  return item;
}
async function refresh() {
  try {
    const domains = await (await fetch("domains.json", {cache: "no-store"})).json();
    document.getElementById("domains").replaceChildren(...domains.map(entry));
    document.getElementById("empty").hidden = domains.length > 0;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
"""
