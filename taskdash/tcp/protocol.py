"""tcpx frames, as Go's ``tcpx.PackWithMarshaller`` writes them: pure functions, no I/O.

A frame is ``length | messageID | headerLength | bodyLength | header | body``, four unsigned
32-bit big-endian integers then the two JSON blobs, with ``length = 12 + headerLength +
bodyLength`` (every byte after the length field). Anything that breaks this raises
:class:`FrameError`: after a length that lies the stream cannot be resynchronised, so the
caller closes the connection. Wire facts: ``../shared/docs/tcpx-wire.md`` and docs/tcp.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgspec

from taskdash.errors import TaskDashError

PREFIX = struct.Struct(">IIII")
"""length, messageID, headerLength, bodyLength."""

PREFIX_SIZE = PREFIX.size  # 16
_LENGTH = struct.Struct(">I")
LENGTH_SIZE = 4
MIN_LENGTH = PREFIX_SIZE - LENGTH_SIZE  # messageID + the two lengths
HEARTBEAT_ID = 1392  # tcpx's default heartbeat messageID
REQUEST_ID = 2  # the seed's Register / Update / Find
NULL = b"null"  # what Go's json.Marshal writes for a nil map or nil body

_encoder = msgspec.json.Encoder()


class FrameError(TaskDashError):
    """Bytes that are not a tcpx frame (or one over the size limit): close the connection."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; header and body are still raw JSON bytes."""

    message_id: int
    header: bytes
    body: bytes


def encode(message_id: int, header: bytes, body: bytes) -> bytes:
    """The bytes of one frame carrying already-encoded ``header`` and ``body``."""
    if not 0 <= message_id <= 0xFFFFFFFF:
        raise FrameError(f"messageID {message_id} does not fit 32 bits")
    length = MIN_LENGTH + len(header) + len(body)
    if length > 0xFFFFFFFF:
        raise FrameError(f"frame of {length} bytes does not fit a 32-bit length")
    return PREFIX.pack(length, message_id, len(header), len(body)) + header + body


def pack(message_id: int, header: Any, body: Any) -> bytes:
    """A frame with ``header`` and ``body`` encoded as JSON (None -> ``null``, like Go's nil).

    Non-ASCII text is written as UTF-8, as Go's encoder does, so ``errmsg`` goes out as the
    seed's bytes.
    """
    return encode(message_id, _encoder.encode(header), _encoder.encode(body))


def heartbeat() -> bytes:
    """The heartbeat frame a tcpx client sends: messageID 1392, header and body ``null``."""
    return encode(HEARTBEAT_ID, NULL, NULL)


def frame_length(first4: bytes, max_frame_size: int) -> int:
    """The ``length`` field, checked as soon as it arrives (before buffering the rest)."""
    (length,) = _LENGTH.unpack_from(first4)
    return _check_length(length, max_frame_size)


def _check_length(length: int, max_frame_size: int) -> int:
    if length < MIN_LENGTH:
        raise FrameError(f"length {length} is below the minimum of {MIN_LENGTH}")
    size = length + LENGTH_SIZE
    if size > max_frame_size:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {max_frame_size}")
    return length


def decode(
    data: bytes | bytearray, max_frame_size: int, start: int = 0
) -> tuple[Frame | None, int]:
    """The first complete frame of ``data[start:]`` and where it ends, or (None, start).

    Raises FrameError as soon as the bytes present prove the frame broken or too large:
    a length below 12 or over the limit, or header and body lengths that do not add up.
    """
    available = len(data) - start
    if available < LENGTH_SIZE:
        return None, start
    if available < PREFIX_SIZE:
        _check_length(_LENGTH.unpack_from(data, start)[0], max_frame_size)
        return None, start
    length, message_id, header_len, body_len = PREFIX.unpack_from(data, start)
    _check_length(length, max_frame_size)
    if MIN_LENGTH + header_len + body_len != length:
        raise FrameError(
            f"length {length} != 12 + headerLength {header_len} + bodyLength {body_len}"
        )
    end = start + LENGTH_SIZE + length
    if len(data) < end:
        return None, start
    split = start + PREFIX_SIZE + header_len
    return Frame(message_id, bytes(data[start + PREFIX_SIZE : split]), bytes(data[split:end])), end


class FrameDecoder:
    """Reassembles frames from a byte stream cut anywhere (1-byte writes, several per write)."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received that do not make a complete frame yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[list[Frame], FrameError | None]:
        """Add ``data``; return the frames now complete, and the error of a broken one after them.

        The frames before a broken one are returned with it, so that a caller can still answer
        what was well framed before it closes the connection. After an error the decoder is
        spent: the rest of the stream cannot be trusted.
        """
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        error: FrameError | None = None
        try:
            while True:
                frame, offset = decode(self._buffer, self.max_frame_size, offset)
                if frame is None:
                    break
                frames.append(frame)
        except FrameError as exc:
            error = exc
        del self._buffer[:offset]
        return frames, error
