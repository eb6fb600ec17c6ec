"""The HTTP servers that run hamnet's app: uvicorn, or granian when it is installed.

Both run the same :class:`~hamnet.serving.app.ServingApp` in this process, on one event
loop (uvloop when installed), with the same lifespan (batchers, alias poller, frozen
heap), so every endpoint, status code and message is the same on either:

- ``uvicorn``: the ASGI reference server; httptools parses HTTP in C and the event
  loop does the socket I/O.
- ``granian``: a Rust HTTP server (``pip install 'hamnet[serve]'``). Its Rust runtime
  thread parses HTTP and does the socket I/O beside the Python event loop; requests
  reach the app through granian's RSGI protocol (:class:`RSGIBridge`): ``POST
  /predict`` goes straight to the app's :class:`~hamnet.serving.app.PredictFastPath`
  (the same validation, batching and answer as under ASGI), every other request goes to
  the FastAPI app through a small RSGI-to-ASGI bridge. HTTP/1 only, no websockets, no
  access log.

``auto`` picks granian when it can be imported, else uvicorn (see
:data:`DEFAULT_ORDER` and ``docs/serving.md`` for the measurements behind it).

Example:
    >>> app = create_app(ServingState.build(settings))  # doctest: +SKIP
    >>> server = resolve_server("auto")  # doctest: +SKIP
    >>> run_server(app, server=server, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from hamnet.core.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from hamnet.serving.app import ServingApp

logger = logging.getLogger("hamnet.serving")

SERVERS = ("auto", "uvicorn", "granian")
"""What ``hamnet serve --server`` accepts."""

DEFAULT_ORDER = ("granian", "uvicorn")
"""What ``auto`` tries, first importable wins."""

_MODULES = {"uvicorn": "uvicorn", "granian": "granian"}


def installed(server: str) -> bool:
    """Whether ``server``'s package can be imported (without importing it)."""
    return importlib.util.find_spec(_MODULES[server]) is not None


def resolve_server(name: str) -> str:
    """The server ``--server NAME`` runs: ``auto`` becomes the first installed one.

    Raises:
        ConfigError: If ``name`` is not one of :data:`SERVERS`.
        MissingDependencyError: If the named server is not installed.
    """
    if name not in SERVERS:
        raise ConfigError(f"the server must be one of {', '.join(SERVERS)}, but got {name!r}")
    if name == "auto":
        found = next((s for s in DEFAULT_ORDER if installed(s)), None)
        if found is None:
            raise MissingDependencyError(
                "hamnet serve needs uvicorn or granian, but neither could be imported; "
                "install the serve extra: pip install 'hamnet[serve]'"
            )
        return found
    if not installed(name):
        raise MissingDependencyError(
            f"--server {name} needs the {name} package, but it could not be imported; "
            "install the serve extra: pip install 'hamnet[serve]'"
        )
    return name


def check_address(host: str, port: int) -> None:
    """Fail early, with one line, when ``host:port`` cannot be listened on.

    uvicorn reports a taken port itself, granian only through a Rust panic; both are
    checked here before anything is printed.

    Raises:
        ConfigError: If a socket cannot bind there (taken port, unknown address).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as err:
        raise ConfigError(
            f"the server must be able to listen on {host}:{port}, but binding failed: {err}"
        ) from None


def describe(server: str) -> str:
    """How ``server`` runs the app, for the start-up line."""
    return {
        "uvicorn": "uvicorn (ASGI, httptools)",
        "granian": "granian (RSGI, Rust HTTP/1)",
    }[server]


def run_server(
    app: ServingApp, *, server: str, host: str, port: int, log_level: str = "warning"
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, then run its shutdown.

    Args:
        app: hamnet's app (:func:`hamnet.serving.app.create_app`).
        server: ``uvicorn`` or ``granian`` (:func:`resolve_server` turns ``auto`` into one).
        host: Bind address.
        port: TCP port.
        log_level: The server's log level (``warning`` keeps it to problems).

    Raises:
        ConfigError: If ``server`` is not ``uvicorn`` or ``granian``.
    """
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    elif server == "granian":
        _run(_serve_granian(app, host, port, log_level))
    else:
        raise ConfigError(f"the server must be uvicorn or granian, but got {server!r}")


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when installed (as uvicorn does), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def _serve_granian(app: ServingApp, host: str, port: int, log_level: str) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    logging.getLogger("_granian").addFilter(_NotExperimental())
    server = Server(
        RSGIBridge(app), address=host, port=port, interface=Interfaces.RSGI,
        http=HTTPModes.http1, websockets=False, log_access=False, runtime_threads=1,
        log_level=_granian_level(log_level, LogLevels),
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.stop)
    try:
        async with app.router.lifespan_context(app):
            await server.serve()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _granian_level(level: str, levels: Any) -> Any:
    """granian's name for a uvicorn-style log level (``trace`` is granian's ``debug``)."""
    name = level.lower()
    return levels(name) if name in {m.value for m in levels} else levels.debug


class _NotExperimental(logging.Filter):
    """Drops granian's "Embedded server is experimental!" line: it is how we run it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "experimental" not in record.getMessage()


class RSGIBridge:
    """hamnet's app behind granian's RSGI protocol.

    ``POST /predict`` is answered by the app's
    :class:`~hamnet.serving.app.PredictFastPath` (:meth:`~PredictFastPath.predict`: the
    same validation, batching and :class:`~hamnet.serving.app.Answer`) and sent with one
    ``response_bytes`` call. Every other HTTP request runs through the FastAPI app as
    ASGI: the RSGI scope becomes an ASGI scope, the body one ``http.request`` message,
    and the response is sent when the app's last body message arrives.

    Args:
        app: hamnet's app.
    """

    def __init__(self, app: ServingApp) -> None:
        self.app = app
        self.json_headers = [("content-type", "application/json")]
        self.fast_path = app.fast_path
        self._key = "x-request-key"

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        """Answer one RSGI request (HTTP only: websockets are turned off)."""
        fast = self.fast_path
        if fast is not None and scope.method == "POST" and scope.path == fast.PATH:
            raw = await proto()
            answer = await fast.predict(raw, scope.headers.get(self._key))
            proto.response_bytes(answer.status, self.json_headers, answer.body)
            return
        await self._asgi(scope, proto)

    async def _asgi(self, scope: Any, proto: Any) -> None:
        body = await proto()
        status = 500
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                await proto.client_disconnect()
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers.extend(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                )
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    proto.response_bytes(status, headers, b"".join(chunks))

        await self.app(_asgi_scope(scope), receive, send)


def _address(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else None


def _asgi_scope(scope: Any) -> dict[str, Any]:
    """The ASGI HTTP scope of an RSGI scope."""
    query: str = scope.query_string
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,
        "raw_path": scope.path.encode(),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": _address(scope.client),
        "server": _address(scope.server),
    }
