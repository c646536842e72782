"""The control API's server: its socket, TLS, and the accept loop around hypercorn.

``HttpControlPlane`` is the agent's ``ControlPlane`` for HTTP: ``bind``
reads what must be right before anything runs (the token: none is allowed
only on a loopback address; the TLS files) and binds the socket, so a port
in use is a clear error at start; ``serve`` accepts connections itself and
hands each to hypercorn's ``TCPServer`` serving ``peer.control.api.ControlApi``.

Why its own accept loop: hypercorn bounds nothing, and API clients must not
use up the file descriptors gossip needs. At most ``api_max_connections``
are open at a time (and at most a quarter of the process's open-file limit);
past it new clients wait in the listen backlog; an idle connection is closed
after ``KEEP_ALIVE_SECONDS``; running out of descriptors pauses accepting
with one log line, not a traceback per attempt. ``TCPServer`` and
``WorkerContext`` are hypercorn internals: pyproject.toml pins the release
this was checked on.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import resource
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from peer.control.api import ControlApi
from peer.control.metrics import ApiStats
from peer.runtime.addresses import format_address, is_ipv6
from peer.runtime.settings import ConfigError, Settings
from peer.runtime.transport import BindError, bind_error_message

if TYPE_CHECKING:
    from peer.runtime.agent import Agent

log = logging.getLogger("peer.api")

# A connection idle this long between requests (or before its first) is closed.
KEEP_ALIVE_SECONDS = 5.0
# A TLS handshake must be done within this.
TLS_HANDSHAKE_SECONDS = 10.0
# Out of descriptors: accepting pauses this long, then tries again.
ACCEPT_RETRY_SECONDS = 0.1
# The most open files ``raise_descriptor_limit`` asks for.
MAX_DESCRIPTORS = 65536
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpControlPlane:
    """The control API as the agent's ``ControlPlane``: its socket, bound
    before the node starts, and hypercorn serving ``ControlApi`` on it.

    ``bind`` reads what must be right before anything runs: the token (none
    is allowed only on a loopback address) and the TLS files. ``serve``
    accepts connections itself, at most ``api_max_connections`` open at a
    time (hypercorn has no such bound), so that API clients cannot use up
    the descriptors gossip needs; running out of descriptors pauses
    accepting with one log line, not a traceback per attempt."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.tls: ssl.SSLContext | None = None
        self.stats = ApiStats()

    def bind(self, settings: Settings) -> socket.socket:
        address = settings.api
        self.token = settings.api_token_value()
        if self.token is None and not is_loopback(address[0]):
            raise BindError(
                f"api: refusing to serve the control API on {format_address(address)} without a token: whoever reaches it "
                "could run code on this node. Give a token (api_token_file / --api-token-file FILE, PEER_API_TOKEN, or "
                "api_token in the config), or bind the API to loopback (--api 127.0.0.1:PORT)"
            )
        self.tls = _server_tls(settings)
        sock = socket.socket(socket.AF_INET6 if is_ipv6(address[0]) else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise BindError(bind_error_message("api", address, error, "--api")) from None
        return sock

    async def serve(self, agent: Agent, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None:
        config = HypercornConfig()
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = KEEP_ALIVE_SECONDS
        config.ssl_handshake_timeout = TLS_HANDSHAKE_SECONDS
        api = ControlApi(agent, token=self.token, stats=self.stats)
        app = wrap_app(api, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]  # Starlette's ASGI types
        context = WorkerContext(None)
        listener: trio.abc.Listener[Any] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        if self.tls is not None:
            listener = trio.SSLListener(listener, self.tls, https_compatible=True)
        limit = trio.Semaphore(connection_limit(agent.settings.api_max_connections))

        async def connection(stream: Any) -> None:
            self.stats.connections += 1
            try:
                await TCPServer(app, config, context, {}, stream)
            finally:
                self.stats.connections -= 1
                limit.release()

        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self._accept, listener, limit, connections, connection)
                    task_status.started()
                    await agent.stopping.wait()
                    accepting.cancel_scope.cancel()
                # Idle keep-alive connections close now; a request running gets a moment.
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        finally:
            await trio.aclose_forcefully(listener)
            agent.api_drained()

    async def _accept(
        self,
        listener: trio.abc.Listener[Any],
        limit: trio.Semaphore,
        nursery: trio.Nursery,
        connection: Callable[[Any], Coroutine[Any, Any, None]],
    ) -> None:
        out_of_descriptors = False
        while True:
            if limit.value == 0:
                self.stats.accept_paused += 1  # clients wait in the listen backlog
            await limit.acquire()
            try:
                stream = await listener.accept()
            except OSError as error:
                limit.release()
                if error.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                self.stats.accept_errors += 1
                if not out_of_descriptors:
                    log.error("control API: cannot accept connections: %s; retrying until descriptors are free", error.strerror)
                    out_of_descriptors = True
                await trio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if out_of_descriptors:
                log.warning("control API: accepting connections again")
                out_of_descriptors = False
            nursery.start_soon(connection, stream)


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (at
    most ``MAX_DESCRIPTORS``): a low default (1,024) is what lets many API
    clients starve gossip. Returns the (old, new) soft limit. For ``peer
    agent``; an embedding program decides its own limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as error:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, error)
            return soft, soft
        return soft, target
    return soft, soft


def connection_limit(configured: int) -> int:
    """``api_max_connections``, and at most a quarter of the process's file
    descriptor limit, so the API leaves descriptors for gossip streams."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return configured
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft // 4))


def _server_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for ``api_tls_cert``/``api_tls_key``, loaded now so a
    bad file is an error at start; None for plain HTTP."""
    cert, key = settings.api_tls_cert, settings.api_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("api_tls_cert and api_tls_key: give both (or neither, for plain HTTP)")
    config = HypercornConfig()
    config.certfile, config.keyfile = cert, key
    config.alpn_protocols = ["http/1.1"]
    try:
        return config.create_ssl_context()
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"api_tls_cert/api_tls_key: cannot load {cert} and {key}: {error}") from None
