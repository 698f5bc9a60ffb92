"""The nsqd TCP listener: magic, command loop, heartbeats, read deadlines, error frames."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import structlog

from taskdash.nsq.broker.client import Client
from taskdash.nsq.broker.commands import Commands
from taskdash.nsq.broker.protocol import (
    FRAME_ERROR,
    FRAME_RESPONSE,
    HEARTBEAT,
    MAGIC_V2,
    OK,
    Features,
    ProtocolError,
    split_command,
)
from taskdash.nsq.broker.registry import Registry
from taskdash.nsq.broker.security import Security
from taskdash.nsq.broker.wire import Codec, Deflate, Snappy, WireReader

log = structlog.get_logger("taskdash.nsq.broker")

# After a fatal error the socket is half-closed and the client's leftovers are drained for at
# most this long, so the error frame is read instead of being lost to a TCP reset.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1 << 20
#: nsqd's deadline for the TLS handshake after IDENTIFY
TLS_HANDSHAKE_TIMEOUT = 5.0


class Connection:
    """One client's life: ``run`` returns when the client is gone; cleanup always happens."""

    def __init__(
        self,
        client_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        registry: Registry,
        security: Security | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.registry = registry
        self.security = security or Security()
        self.client = Client(client_id, writer, registry.options)
        self.commands = Commands(
            self.client,
            reader,
            registry,
            self._restart_heartbeat,
            security=self.security,
            upgrade=self._upgrade,
        )
        self._heartbeat: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve until EOF, a fatal error, a read deadline or a broker stop."""
        client = self.client
        self.registry.connections[client.id] = client
        log.info("client_connected", client=client.remote_address)
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.info("client_dropped", client=client.remote_address, error=repr(exc))
        except Exception:  # a broker bug must cost one connection, not the listener
            log.exception("client_crashed", client=client.remote_address)
        finally:
            self._cleanup()

    async def _serve(self) -> None:
        """Magic first, then one command line (and its body) at a time."""
        # nsqd waits for the magic forever; a deadline keeps idle sockets from piling up.
        async with asyncio.timeout(self._read_timeout()):
            magic = await self.reader.readexactly(4)
        if magic != MAGIC_V2:
            log.warning("bad_protocol", client=self.client.remote_address, magic=repr(magic))
            self.client.write(FRAME_ERROR, b"E_BAD_PROTOCOL")
            await self._linger()
            return
        self._restart_heartbeat()
        while not self.client.disconnected:
            try:
                async with asyncio.timeout(self._read_timeout()):
                    line = await self._read_line()
                    if line is None:
                        return
                    response = await self.commands.execute(split_command(line))
            except TimeoutError:
                log.info("client_timeout", client=self.client.remote_address)
                return
            except ProtocolError as err:
                self._log_error(err)
                self.client.write(FRAME_ERROR, err.data)
                if err.fatal:
                    await self._linger()
                    return
                continue
            if response is not None:
                self.client.write(FRAME_RESPONSE, response)

    async def _read_line(self) -> bytes | None:
        """The next command line, or None at EOF or when it exceeds the line limit."""
        try:
            return await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.info("client_partial_line", client=self.client.remote_address)
            return None
        except asyncio.LimitOverrunError:
            log.warning("line_too_long", client=self.client.remote_address)
            return None

    # --- TLS and compression upgrades (nsqd's UpgradeTLS/UpgradeSnappy/UpgradeDeflate) ------

    async def _upgrade(self, features: Features) -> None:
        """After the IDENTIFY answer: TLS in place, then one compression; each confirmed by OK."""
        client = self.client
        if features.tls_v1:
            await self._upgrade_tls()
            client.write(FRAME_RESPONSE, OK)
        codec: Codec | None = None
        if features.snappy:
            codec = Snappy()
        elif features.deflate:
            codec = Deflate(features.deflate_level)
        if codec is not None:
            if isinstance(self.reader, WireReader):
                self.reader.decompress_with(codec)
            client.codec = codec
            client.write(FRAME_RESPONSE, OK)
        log.info(
            "client_upgraded",
            client=client.remote_address,
            tls=client.tls is not None,
            tls_version=client.tls.version() if client.tls is not None else None,
            compression=codec.name if codec is not None else None,
            deflate_level=features.deflate_level if features.deflate else None,
        )

    async def _upgrade_tls(self) -> None:
        """The TLS handshake on this very socket; a failed one ends the connection."""
        context = self.security.tls_context
        assert context is not None
        self.client.hold()
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except OSError as exc:  # ssl.SSLError, a reset, the handshake deadline
            log.warning("client_tls_failed", client=self.client.remote_address, error=str(exc))
            raise ConnectionError(f"TLS handshake failed: {exc}") from None
        self.client.tls = self.writer.get_extra_info("ssl_object")
        self.client.release()

    def _read_timeout(self) -> float | None:
        """nsqd's read deadline: twice the heartbeat interval; none when heartbeats are off."""
        interval = self.client.settings.heartbeat_interval_ms
        return 2 * interval / 1000 if interval > 0 else None

    def _restart_heartbeat(self) -> None:
        """(Re)start ``_heartbeat_`` frames at the negotiated interval (IDENTIFY resets it)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        interval = self.client.settings.heartbeat_interval_ms
        if interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._heartbeats(interval / 1000)
            )

    async def _heartbeats(self, interval: float) -> None:
        """The client answers each with NOP, which keeps its read deadline from expiring."""
        while True:
            await asyncio.sleep(interval)
            self.client.write(FRAME_RESPONSE, HEARTBEAT)

    async def _linger(self) -> None:
        """Half-close and drain briefly so the client reads the error frame before the close.

        The client is detached first, as nsqd drops a failed client at once: messages go to
        the healthy consumers, and nothing is written after the half-close.
        """
        self._detach()
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        drained = 0
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            async with asyncio.timeout(_LINGER_SECONDS):
                while drained < _LINGER_BYTES:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        break
                    drained += len(chunk)

    def _log_error(self, err: ProtocolError) -> None:
        """Client mistakes are warnings (fatal) or info (FIN/REQ/TOUCH races)."""
        emit = log.warning if err.fatal else log.info
        emit(
            "client_error",
            client=self.client.remote_address,
            code=err.code,
            error=err.desc,
            fatal=err.fatal,
        )

    def _detach(self) -> None:
        """Stop being a consumer: no more messages or heartbeats (in-flight ones time out)."""
        client = self.client
        client.disconnected = True
        client.ready_count = 0
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if client.channel is not None:
            client.channel.remove_client(client.id)
        self.registry.connections.pop(client.id, None)

    def _cleanup(self) -> None:
        """Detach (idempotent) and close the socket."""
        self._detach()
        self.writer.close()
        log.info("client_closed", client=self.client.remote_address)


class TcpServer:
    """Accepts clients and tracks their tasks so ``stop`` can end them."""

    def __init__(self, registry: Registry, security: Security | None = None) -> None:
        self.registry = registry
        self.security = security or Security()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)

    async def start(self, host: str, port: int) -> None:
        """Listen; the line limit doubles as the stream buffer limit.

        asyncio.start_server's own factory, with a reader that can decompress mid-stream.
        """
        loop = asyncio.get_running_loop()
        limit = self.registry.options.max_line_length

        def factory() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(WireReader(limit, loop), self._accept, loop=loop)

        self._server = await loop.create_server(factory, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One task per client."""
        task = asyncio.current_task()
        assert task is not None
        conn = Connection(next(self._ids), reader, writer, self.registry, self.security)
        self._tasks.add(task)
        self._connections[conn.client.id] = conn
        try:
            await conn.run()
        finally:
            self._tasks.discard(task)
            self._connections.pop(conn.client.id, None)

    def close_now(self) -> None:
        """Stop listening and close every client, without waiting (loop thread only)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.client.close()

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, close every client, wait a bounded time, cancel stragglers."""
        self.close_now()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), grace)
            self._server = None
