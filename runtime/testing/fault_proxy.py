"""A TCP proxy that injects faults between a client and its server, switched at run time.

Put it between an adapter and Postgres, Redis or S3 and the adapter's real client meets real
network failures::

    async with FaultProxy("127.0.0.1", 6379) as proxy:
        client = redis.asyncio.Redis(host=proxy.host, port=proxy.port)
        proxy.blackhole()      # existing and new connections hang
        proxy.heal()

Modes (each call replaces the previous one; :meth:`heal` goes back to normal):

- :meth:`latency`: every chunk, in each direction, is held ``seconds`` before it is forwarded;
- :meth:`blackhole`: connections are accepted and bytes read, but nothing is forwarded either way,
  so clients wait until their own timeouts;
- :meth:`refuse`: the listening socket is closed, so new connections are refused (existing ones
  keep working); :meth:`heal` listens again on the same port.

:meth:`reset` is an action, not a mode: every open connection is closed with a TCP RST
(``SO_LINGER`` 0), as when a server or a middlebox dies; new connections work as before.

The proxy works on raw non-blocking sockets through AnyIO's ``wait_readable``/``wait_writable`` so
that it owns each socket's close (an RST needs ``SO_LINGER`` set and no FIN sent first, which stream
wrappers do not allow). Every task belongs to the proxy's task group and ends with the context.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import socket
import struct
from types import TracebackType
from typing import Final, Self, final

import anyio
from anyio.abc import TaskGroup

from runtime.logging import get_logger

__all__ = ["FaultMode", "FaultProxy"]

_CHUNK: Final = 65536
_log = get_logger("runtime.testing.fault_proxy")


class FaultMode(enum.Enum):
    NORMAL = "normal"
    LATENCY = "latency"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


def _close(sock: socket.socket, *, rst: bool = False) -> None:
    if sock.fileno() == -1:
        return
    if rst:
        # Linger on with a zero timeout: close() discards unsent data and sends RST, not FIN.
        # (A socket the peer already tore down may refuse the option; it is being closed anyway.)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Wake any task waiting on the socket before its descriptor goes away (AnyIO's rule).
    anyio.notify_closing(sock)
    sock.close()


async def _recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(_CHUNK)
        except BlockingIOError:
            await anyio.wait_readable(sock)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
        else:
            view = view[sent:]


async def _connect(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        code = sock.connect_ex((host, port))
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except BaseException:
        _close(sock)
        raise
    if code:
        _close(sock)
        raise OSError(code, f"connecting to {host}:{port}: {errno.errorcode.get(code, code)}")
    return sock


@final
class _Connection:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.scope = anyio.CancelScope()
        self.reset = False


@final
class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``, with switchable faults.

    Use as an async context manager; :attr:`host` and :attr:`port` are where clients connect.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self._mode = FaultMode.NORMAL
        self._latency_s = 0.0
        self._listener: socket.socket | None = None
        self._connections: set[_Connection] = set()
        self._tg: TaskGroup | None = None

    @property
    def mode(self) -> FaultMode:
        return self._mode

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._connections)

    # -- switches --------------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it, in both directions."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._listen()
        self._mode, self._latency_s = FaultMode.LATENCY, seconds

    def blackhole(self) -> None:
        """Accept and read, forward nothing: clients hang until their own timeouts."""
        self._listen()
        self._mode = FaultMode.BLACKHOLE

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones are left alone."""
        self._mode = FaultMode.REFUSE
        if self._listener is not None:
            _close(self._listener)
            self._listener = None

    def reset(self) -> None:
        """Close every open connection with an RST now; the mode does not change."""
        for conn in list(self._connections):
            conn.reset = True
            _close(conn.client, rst=True)
            if conn.upstream is not None:
                _close(conn.upstream, rst=True)
            conn.scope.cancel()
        _log.info("fault_proxy.reset", port=self.port)

    def heal(self) -> None:
        """Back to normal: forward at full speed and accept connections again."""
        self._listen()
        self._mode, self._latency_s = FaultMode.NORMAL, 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            self._listen()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None, "FaultProxy exited without being entered"
        if self._listener is not None:
            _close(self._listener)
            self._listener = None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    # -- internals -------------------------------------------------------------------------------

    def _listen(self) -> None:
        if self._listener is not None:
            return
        if self._tg is None:
            raise RuntimeError("FaultProxy is not running; use it as an async context manager")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Rebinding the same port after refuse() must not wait out TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._tg.start_soon(self._accept_loop, listener)

    async def _accept_loop(self, listener: socket.socket) -> None:
        assert self._tg is not None
        while True:
            try:
                await anyio.wait_readable(listener)
                client, _ = listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                continue  # another wake-up took it, or the client gave up before accept()
            except (anyio.ClosedResourceError, OSError):
                return  # refuse() or shutdown closed the listener
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._tg.start_soon(self._serve, _Connection(client))

    async def _serve(self, conn: _Connection) -> None:
        self._connections.add(conn)
        try:
            with conn.scope:
                try:
                    conn.upstream = await _connect(*self.upstream)
                except OSError as exc:
                    _log.info("fault_proxy.upstream_unreachable", error=str(exc))
                    conn.reset = True  # the client sees what it would see from a dead server
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, conn, conn.client, conn.upstream)
                    tg.start_soon(self._pump, conn, conn.upstream, conn.client)
        finally:
            self._connections.discard(conn)
            _close(conn.client, rst=conn.reset)
            if conn.upstream is not None:
                _close(conn.upstream, rst=conn.reset)

    def _blackholed(self) -> bool:
        return self._mode is FaultMode.BLACKHOLE

    async def _pump(self, conn: _Connection, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = await _recv(source)
                if not data:
                    # Pass the half-close on, so request/response protocols still finish.
                    sink.shutdown(socket.SHUT_WR)
                    return
                if self._mode is FaultMode.LATENCY and self._latency_s:
                    await anyio.sleep(self._latency_s)
                if self._blackholed():  # checked after the delay: the mode may have changed
                    continue
                await _send_all(sink, data)
        except (OSError, anyio.ClosedResourceError):
            # One side broke (or reset() closed it): take the whole connection down.
            conn.scope.cancel()
