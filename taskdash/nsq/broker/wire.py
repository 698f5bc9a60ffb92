"""The bytes under the V2 protocol: a StreamReader that can start decompressing mid-stream,
and the deflate and snappy codecs nsqd negotiates in IDENTIFY.

nsqd swaps its connection's reader and writer for compressing ones after IDENTIFY; here the
same StreamReader is kept (the command loop holds it) and told to decompress what it is fed
from then on, and the client's frames go through the codec's encoder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import zlib
from typing import Any, Protocol

#: at most this many decompressed bytes are made from one received chunk before the rest waits
#: for the command loop to read: a small deflate bomb cannot fill memory
_INFLATE_STEP = 256 * 1024


def snappy_available() -> bool:
    """python-snappy (the ``snappy`` module pynsq uses too) is installed: the ``snappy`` extra."""
    return importlib.util.find_spec("snappy") is not None


class Codec(Protocol):
    """One connection's compression, both directions."""

    name: str

    def encode(self, data: bytes) -> bytes:
        """Compress ``data`` and flush, so the client can decode it at once."""

    def decode(self, data: bytes, max_length: int) -> tuple[bytes, bytes]:
        """Decompress what arrived: (output, input left for later when output hit max_length)."""


class Deflate:
    """Raw DEFLATE (no zlib header) both ways, each write ended by a sync flush, as Go's flate."""

    name = "deflate"

    def __init__(self, level: int) -> None:
        self.level = level
        self._compress = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._decompress = zlib.decompressobj(-zlib.MAX_WBITS)

    def encode(self, data: bytes) -> bytes:
        return self._compress.compress(data) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, data: bytes, max_length: int) -> tuple[bytes, bytes]:
        out = self._decompress.decompress(data, max_length)
        return out, self._decompress.unconsumed_tail


class Snappy:
    """The snappy framing format (stream identifier, CRC-checked chunks), as Go's snappy."""

    name = "snappy"

    def __init__(self) -> None:
        import snappy  # the optional extra; checked before it is ever offered

        self._compress = snappy.StreamCompressor()
        self._decompress = snappy.StreamDecompressor()

    def encode(self, data: bytes) -> bytes:
        return bytes(self._compress.compress(data))

    def decode(self, data: bytes, max_length: int) -> tuple[bytes, bytes]:
        # a chunk holds at most 64 KiB once decompressed: the output is bounded by the input
        return bytes(self._decompress.decompress(data)), b""


class WireReader(asyncio.StreamReader):
    """A StreamReader fed raw bytes until :meth:`decompress_with`, decompressed bytes after.

    Decompression is bounded per step; what is left waits (the socket paused) until the
    command loop reads: asyncio's resume hook and its wait for data (private methods of
    StreamReader, stable since 3.4) take the next step. A deflate bomb thus costs at most what
    the command being read may hold (max_body_size), plus one step.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.codec: Codec | None = None
        self._tail = b""
        self._eof_waiting = False
        self._broken = False

    def decompress_with(self, codec: Codec) -> None:
        """From now on, what arrives is ``codec``'s compressed stream."""
        self.codec = codec

    def feed_data(self, data: bytes) -> None:
        if self.codec is None:
            super().feed_data(data)
        elif not self._broken:
            self._inflate(self._tail + data if self._tail else data)

    def feed_eof(self) -> None:
        if self._tail and not self._broken:
            self._eof_waiting = True  # the rest of the stream is still to be decompressed
            return
        super().feed_eof()

    def _inflate(self, data: bytes) -> None:
        assert self.codec is not None
        try:
            out, self._tail = self.codec.decode(data, _INFLATE_STEP)
        except Exception as exc:  # zlib.error, snappy's errors: the stream cannot go on
            self._broken = True
            self._tail = b""
            self.set_exception(ConnectionError(f"corrupt {self.codec.name} stream: {exc}"))
            return
        if out:
            super().feed_data(out)
        transport: Any = self._transport
        if self._tail and transport is not None:
            transport.pause_reading()

    def _more(self) -> None:
        """Decompress the next step of what is waiting; resume the socket once none is left."""
        tail, self._tail = self._tail, b""
        self._inflate(tail)
        if not self._tail:
            if self._eof_waiting:
                super().feed_eof()
            elif self._transport is not None:
                self._transport.resume_reading()  # type: ignore[attr-defined]

    def _maybe_resume_transport(self) -> None:
        # asyncio's hook after each read: decompress more once the buffer is drained
        buffered: bytearray = self._buffer  # type: ignore[attr-defined]
        if self._tail and len(buffered) <= self._limit:  # type: ignore[attr-defined]
            self._more()
        super()._maybe_resume_transport()  # type: ignore[misc]

    async def _wait_for_data(self, func_name: str) -> None:
        # a read wants more than is buffered: the next step, before waiting on the socket
        if self._tail and not self._broken:
            self._more()
            return
        await super()._wait_for_data(func_name)  # type: ignore[misc]
