"""The explorer's HTTP server: the standard library's ThreadingHTTPServer, one page of package files and a JSON API
over :class:`inceptionlab.explore.model.Explorer`.

Safe by default (docs/explorer.md, "Security"): it binds 127.0.0.1; a request whose ``Host`` is not the served
address (or localhost / 127.0.0.1 with its port) gets 403, so a page on another site cannot reach it through DNS
rebinding; no CORS headers; a strict Content-Security-Policy; only the files in :data:`STATIC` are served (no
path is ever joined to a directory); a POST needs a Content-Length and more than :data:`MAX_BODY` is refused before
the body is read; pictures are decoded by predict's loader, which refuses bombs and non-images.
"""

from __future__ import annotations

import errno
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from inceptionlab.errors import InceptionLabError
from inceptionlab.explore.model import Explorer, parse_off

MAX_BODY = 8 * 1024 * 1024  # an upload larger than a phone photo is refused before it is read
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    """An HTTP error with a one-line message (sent as JSON ``{"error": ...}``)."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def static_file(name: str) -> bytes:
    return resources.files("inceptionlab.explore").joinpath("static", name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the terminal shows the one "serving" line, not every request

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, route) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            status, body, kind = route(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
        except RequestError as exc:
            status, body, kind = exc.status, _json({"error": str(exc)}), "application/json"
        except InceptionLabError as exc:
            status, body, kind = HTTPStatus.BAD_REQUEST, _json({"error": str(exc).splitlines()[0]}), "application/json"
        except Exception as exc:  # a bug: one line to the page, and the server keeps serving
            message = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
            status, body, kind = HTTPStatus.INTERNAL_SERVER_ERROR, _json({"error": message}), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _check_host(self) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts:
            self.close_connection = True
            raise RequestError(HTTPStatus.FORBIDDEN, f"Host {host!r} is not this server's address; open "
                               f"{self.server.url}")

    def _get(self, path: str, query: dict):
        if path in STATIC:
            name, kind = STATIC[path]
            return HTTPStatus.OK, static_file(name), kind
        ex = self.server.explorer
        routes = {
            "/api/run": lambda: ex.summary(),
            "/api/size": lambda: ex.sizes(_int(query, "size")),
            "/api/confusion": lambda: ex.confusion(),
            "/api/pair": lambda: ex.pair(_int(query, "true"), _int(query, "predicted")),
            "/api/specialists": lambda: ex.specialists(query.get("block", "")),
            "/api/inspect": lambda: ex.job,
        }
        if path not in routes:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        return HTTPStatus.OK, _json(routes[path]()), "application/json"

    def _post(self, path: str, query: dict):
        body = self._body()
        ex = self.server.explorer
        if path == "/api/upload":
            invert = {"yes": True, "no": False}.get(query.get("invert", "auto"), "auto")
            return HTTPStatus.OK, _json({"upload": ex.add_upload(body, invert)}), "application/json"
        routes = {"/api/predict": lambda a: ex.predict(a.get("image"), a.get("upload"), parse_off(a.get("off")),
                                                       a.get("mode", "zero")),
                  "/api/knockout": lambda a: ex.knockout(a.get("image"), a.get("upload"), a.get("mode", "zero")),
                  "/api/anatomy": lambda a: ex.anatomy(a.get("block", ""), a.get("image"), a.get("upload")),
                  "/api/inspect": lambda a: ex.start_inspect(int(a.get("limit", 1000)))}
        if path not in routes:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
        if not isinstance(args, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        return HTTPStatus.OK, _json(routes[path](args)), "application/json"

    def _body(self) -> bytes:
        """The request body; refused before reading when its length is missing or over MAX_BODY."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length header")
        if int(length) > MAX_BODY:
            self.close_connection = True  # the body is never read: this connection cannot carry another request
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"{int(length):,} bytes is more than the {MAX_BODY // 2**20} MB an upload may have; "
                               "shrink the picture")
        return self.rfile.read(int(length))


def _int(query: dict, name: str) -> int:
    try:
        return int(query[name])
    except (KeyError, ValueError):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"?{name}= must be a whole number") from None


def _json(value) -> bytes:
    return json.dumps(value).encode()


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0):
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InceptionLabError(f"port {port} on {host} is in use; pick another with --port "
                                        "(--port 0: any free port)") from None
            raise InceptionLabError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host") from None
        self.explorer = explorer
        self.port = self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self.allowed_hosts = {f"{shown}:{self.port}"} | {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost",
                                                                                      "[::1]")}

    def handle_error(self, request, client_address) -> None:
        """A client gone away (or Ctrl-C with a connection open) is no error; anything else is one line, not the
        standard library's traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError, KeyboardInterrupt)):
            print(f"inceptionlab serve: a request from {client_address[0]} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def start_in_thread(server: ExplorerServer) -> threading.Thread:
    """Serve on a daemon thread (tests, notebooks); ``server.shutdown()`` stops it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="inceptionlab-explorer")
    thread.start()
    return thread
