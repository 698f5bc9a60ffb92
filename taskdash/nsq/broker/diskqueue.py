"""Messages beyond mem_queue_size in segment files, after nsqd's go-diskqueue (own format).

Files in the data dir for a queue NAME (``topic``, or ``topic:channel`` like nsqd's backend names;
``:`` is never part of a topic or channel name):

- ``NAME.diskqueue.000000.dat``...: segments. A 12-byte header (``TDQ1`` and the sequence number
  of the file's first record), then records ``[u32 length][u32 crc32][payload]``; the payload is
  i64 timestamp (ns), u16 attempts, the 16-byte id, i64 wall-clock due time (ns, 0 = now), u32
  DPUB delay not started yet (ms, a topic's backlog), then the body. A new segment starts when
  the next record would pass ``max_bytes_per_file``.
- ``NAME.diskqueue.meta.json``: where reading and writing stand, plus the records handed out
  (in flight, deferred) and not finished: those are read again after a restart. Written on
  creation (so the topic or channel exists after a crash) and at every sync.

Writes go to the file with ``os.write`` before the publisher's OK (the kernel has them: a killed
process loses nothing written); ``fsync`` runs every ``sync_every`` records or ``sync_timeout``,
and at every new segment. After a crash the metadata may be behind: the segments are scanned
past its write position, a torn last record is cut off, and records read since the last sync
are read again (delivered twice, never lost). A record that fails its checksum or length check
while being read puts its file aside as ``.bad`` (logged) and reading goes on with the next file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from taskdash.nsq.broker.message import Message
from taskdash.nsq.broker.persist import fsync_dir as _fsync_dir

log = structlog.get_logger("taskdash.nsq.broker")

SEGMENT_MAGIC = b"TDQ1"
META_FORMAT = "taskdash-diskqueue"
META_VERSION = 1
_SEG_HEAD = struct.Struct(">4sQ")
_REC_HEAD = struct.Struct(">II")
_PAYLOAD_HEAD = struct.Struct(">qH16sqI")
_SEGMENT_NAME = re.compile(r"(?P<name>.+)\.diskqueue\.(?P<num>\d{6,})\.dat")
_META_SUFFIX = ".diskqueue.meta.json"


class CorruptRecord(Exception):
    """A record that cannot be trusted: nothing after it in its file can be framed."""


@dataclass(frozen=True, slots=True)
class DiskOptions:
    """nsqd's diskqueue knobs (``--max-bytes-per-file``, ``--sync-every``, ``--sync-timeout``)."""

    max_bytes_per_file: int = 104857600
    sync_every: int = 2500
    sync_timeout: float = 2.0


def encode(msg: Message) -> bytes:
    """One record: length, checksum, payload."""
    payload = (
        _PAYLOAD_HEAD.pack(msg.timestamp, msg.attempts, msg.id, msg.due_wall_ns, msg.defer_ms)
        + msg.body
    )
    return _REC_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Message:
    """The message a checked payload holds."""
    timestamp, attempts, msg_id, due_ns, defer_ms = _PAYLOAD_HEAD.unpack_from(payload)
    msg = Message(msg_id, payload[_PAYLOAD_HEAD.size :], timestamp, attempts, defer_ms=defer_ms)
    msg.due_wall_ns = due_ns
    return msg


def queue_names(directory: Path) -> list[str]:
    """Every queue with a metadata file or a segment in ``directory``, sorted."""
    names: set[str] = set()
    if not directory.is_dir():
        return []
    for path in directory.iterdir():
        if path.name.endswith(_META_SUFFIX):
            names.add(path.name[: -len(_META_SUFFIX)])
        elif (match := _SEGMENT_NAME.fullmatch(path.name)) is not None:
            names.add(match["name"])
    return sorted(names)


class DiskQueue:
    """A FIFO of records on disk with a read position, a write position and unfinished records.

    A record handed out by :meth:`popleft` stays *outstanding* (its file is kept, and it is
    listed in the metadata) until :meth:`release`: a crash or a stop before that makes it
    come back, with the attempts and due time it had at the last sync.
    """

    def __init__(self, directory: Path, name: str, options: DiskOptions) -> None:
        self.directory = directory
        self.name = name
        self.options = options
        self._write_num = 0
        self._write_off = 0  # 0: the segment is not created yet
        self._write_seq = 0
        self._read_num = 0
        self._read_off = 0  # 0: the segment header is still to be read
        self._read_seq = 0
        self._fd: int | None = None
        self._reader: BinaryIO | None = None
        self._reader_size = 0
        self._revisit: deque[tuple[int, int, int, int, int]] = deque()  # seq num off att due
        self._outstanding: dict[int, tuple[int, int, Message]] = {}  # seq -> num, off, msg
        self._per_file: dict[int, int] = {}  # segment -> outstanding records in it
        self._oldest_num = 0
        self._unsynced = 0
        self._dir_dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._load()

    # --- public -------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records waiting to be read (again)."""
        return self._write_seq - self._read_seq + len(self._revisit)

    @property
    def outstanding(self) -> int:
        """Records handed out and not released."""
        return len(self._outstanding)

    def create(self) -> None:
        """Write the metadata if there is none yet: the queue now exists across a crash."""
        if not self._meta_path().exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_meta()
            _fsync_dir(self.directory)

    def append(self, messages: Sequence[Message]) -> None:
        """Write records at the end (in the kernel when this returns); raises OSError."""
        limit = self.options.max_bytes_per_file
        buf = bytearray()
        count = 0
        for msg in messages:
            record = encode(msg)
            pending = (self._write_off or _SEG_HEAD.size) + len(buf)
            if pending > _SEG_HEAD.size and pending + len(record) > limit:
                self._write(buf, count)
                buf.clear()
                count = 0
                self._roll()
            buf += record
            count += 1
        if count:
            self._write(buf, count)
        self._note_changes(len(messages))

    def popleft(self) -> Message | None:
        """The next record (records to deliver again first), now outstanding; None if empty."""
        while self._revisit:
            seq, num, off, attempts, due_ns = self._revisit.popleft()
            msg = self._read_one_at(num, off)
            if msg is not None:
                msg.attempts, msg.due_wall_ns = attempts, due_ns
                self._take(seq, num, off, msg)
                return msg
        while self._read_seq < self._write_seq:
            num = self._read_num
            try:
                msg = self._read_next()
            except (CorruptRecord, OSError) as exc:
                self._skip_bad_file(exc)
                continue
            if msg is None:
                continue  # moved on to the next segment
            self._take(self._read_seq - 1, num, self._record_start, msg)
            self._note_changes(1)
            return msg
        return None

    def release(self, seq: int) -> None:
        """A handed-out record is done with (finished, or written again elsewhere)."""
        entry = self._outstanding.pop(seq, None) if seq >= 0 else None
        if entry is None:
            return
        num = entry[0]
        left = self._per_file[num] - 1
        if left:
            self._per_file[num] = left
        else:
            del self._per_file[num]
            self._collect()

    def sync(self) -> None:
        """fsync the segment being written, then the metadata (atomically replaced)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd is not None:
            os.fsync(self._fd)
        if self._dir_dirty:
            _fsync_dir(self.directory)
            self._dir_dirty = False
        self._write_meta()
        self._unsynced = 0

    def close(self) -> None:
        """Sync and close the files (the broker's stop); the queue is not used afterwards."""
        if self.closed:
            return
        try:
            self.sync()
        finally:
            self._close_files()
            self.closed = True

    def delete(self) -> None:
        """Remove every file of the queue (topic or channel deleted)."""
        self._close_files()
        self.closed = True
        for path in self._own_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def rename(self, name: str) -> None:
        """Hand the files to another queue name (a topic's backlog to its first channel)."""
        self.sync()
        self._close_files()
        for path in sorted(self._own_files(), key=lambda p: p.name.endswith(_META_SUFFIX)):
            path.rename(self.directory / (name + path.name[len(self.name) :]))
        self.name = name
        _fsync_dir(self.directory)

    # --- writing ------------------------------------------------------------------------------

    def _write(self, buf: bytearray, count: int) -> None:
        """One write of whole records; on failure the segment is cut back to its last record."""
        if self._fd is None:
            self._open_for_write()
        assert self._fd is not None
        done = 0
        view = memoryview(buf)
        try:
            while done < len(buf):
                done += os.write(self._fd, view[done:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._write_off)
            raise
        self._write_off += len(buf)
        self._write_seq += count

    def _open_for_write(self) -> None:
        """Open (or create with its header) the segment at the write position."""
        path = self._segment(self._write_num)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if self._write_off == 0:
                os.ftruncate(fd, 0)
                os.write(fd, _SEG_HEAD.pack(SEGMENT_MAGIC, self._write_seq))
                self._write_off = _SEG_HEAD.size
                self._dir_dirty = True
                log.debug("diskqueue_segment_created", queue=self.name, path=str(path))
            os.lseek(fd, self._write_off, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _roll(self) -> None:
        """The segment is full: sync it (as nsqd does at every new file) and start the next."""
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._reader is not None and self._read_num == self._write_num:
            self._reader_size = self._write_off  # the segment being read is complete now
        self._write_num += 1
        self._write_off = 0

    def _note_changes(self, count: int) -> None:
        """sync_every records (written or read) since the last sync: sync; else arm the timer."""
        self._unsynced += count
        if self._unsynced >= self.options.sync_every:
            self.sync()
        elif self._unsynced and self._timer is None:
            with contextlib.suppress(RuntimeError):  # no loop: a sync at close will do
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.options.sync_timeout, self._on_timer)

    def _on_timer(self) -> None:
        """sync_timeout passed with unsynced changes."""
        self._timer = None
        if self.closed:
            return
        try:
            self.sync()
        except OSError as exc:
            log.error("diskqueue_sync_failed", queue=self.name, error=str(exc))

    # --- reading ------------------------------------------------------------------------------

    _record_start = 0

    def _read_next(self) -> Message | None:
        """The record at the read position; None when it moved to the next segment."""
        if self._reader is None:
            self._open_for_read()
            if self._reader is None:
                return None
        reader = self._reader
        head = reader.read(_REC_HEAD.size)
        if not head and self._read_num < self._write_num:
            self._next_read_segment()
            return None
        if len(head) < _REC_HEAD.size:
            raise CorruptRecord(f"record header cut short at offset {self._read_off}")
        length, crc = _REC_HEAD.unpack(head)
        if length < _PAYLOAD_HEAD.size or self._read_off + _REC_HEAD.size + length > self._end():
            raise CorruptRecord(f"invalid record length {length} at offset {self._read_off}")
        payload = reader.read(length)
        if len(payload) < length:
            raise CorruptRecord(f"record cut short at offset {self._read_off}")
        if zlib.crc32(payload) != crc:
            raise CorruptRecord(f"checksum mismatch at offset {self._read_off}")
        self._record_start = self._read_off
        self._read_off += _REC_HEAD.size + length
        self._read_seq += 1
        return decode(payload)

    def _end(self) -> int:
        """Bytes readable in the read segment."""
        return self._write_off if self._read_num == self._write_num else self._reader_size

    def _open_for_read(self) -> None:
        """Open the read segment, check its header, position at the read offset."""
        path = self._segment(self._read_num)
        try:
            reader = path.open("rb")
        except FileNotFoundError:
            if self._read_num >= self._write_num:
                raise CorruptRecord(f"{path.name} is missing") from None
            log.error("diskqueue_segment_missing", queue=self.name, path=str(path))
            self._next_read_segment()
            return
        try:
            self._reader_size = os.fstat(reader.fileno()).st_size
            if self._read_off == 0:
                magic, first_seq = _SEG_HEAD.unpack(reader.read(_SEG_HEAD.size).ljust(12, b"\0"))
                if magic != SEGMENT_MAGIC:
                    raise CorruptRecord(f"{path.name} is not a taskdash diskqueue segment")
                if first_seq != self._read_seq:
                    log.warning(
                        "diskqueue_sequence_gap",
                        queue=self.name,
                        path=str(path),
                        expected=self._read_seq,
                        found=first_seq,
                    )
                    self._read_seq = min(first_seq, self._write_seq)
                self._read_off = _SEG_HEAD.size
            reader.seek(self._read_off)
        except BaseException:
            reader.close()
            raise
        self._reader = reader

    def _next_read_segment(self) -> None:
        """Reading moves on to the next file; the previous one goes once nothing needs it."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._read_num += 1
        self._read_off = 0
        self._collect()

    def _read_one_at(self, num: int, off: int) -> Message | None:
        """One record to deliver again, by position; None (logged) if it cannot be read."""
        path = self._segment(num)
        try:
            with path.open("rb") as src:
                src.seek(off)
                head = src.read(_REC_HEAD.size)
                if len(head) < _REC_HEAD.size:
                    raise CorruptRecord(f"no record at offset {off}")
                length, crc = _REC_HEAD.unpack(head)
                payload = src.read(length)
                if len(payload) != length or length < _PAYLOAD_HEAD.size:
                    raise CorruptRecord(f"record cut short at offset {off}")
                if zlib.crc32(payload) != crc:
                    raise CorruptRecord(f"checksum mismatch at offset {off}")
                return decode(payload)
        except (CorruptRecord, OSError) as exc:
            log.error("diskqueue_record_lost", queue=self.name, path=str(path), error=str(exc))
            return None

    def _skip_bad_file(self, exc: Exception) -> None:
        """A record cannot be read: keep the file aside as .bad, go on with the next one."""
        path = self._segment(self._read_num)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._read_num == self._write_num:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._write_num += 1
            self._write_off = 0
        aside = path.with_name(path.name + ".bad")
        with contextlib.suppress(FileNotFoundError):
            path.rename(aside)
        log.error(
            "diskqueue_corrupt",
            queue=self.name,
            path=str(path),
            kept_as=str(aside),
            offset=self._read_off,
            error=str(exc),
            lost_at_most=self._records_up_to_next_file(),
        )
        self._read_num += 1
        self._read_off = 0
        if self._read_num == self._write_num and self._write_off == 0:
            self._read_seq = self._write_seq
        self._collect()
        self._note_changes(1)

    def _records_up_to_next_file(self) -> int:
        """How many records the rest of a bad file could have held (for the log)."""
        nxt = self._segment(self._read_num + 1)
        try:
            with nxt.open("rb") as src:
                magic, first = _SEG_HEAD.unpack(src.read(_SEG_HEAD.size))
            if magic == SEGMENT_MAGIC:
                return max(0, first - self._read_seq)
        except (OSError, struct.error):
            pass
        return max(0, self._write_seq - self._read_seq)

    def _take(self, seq: int, num: int, off: int, msg: Message) -> None:
        """A record handed out: remembered until released."""
        msg.disk_seq = seq
        self._outstanding[seq] = (num, off, msg)
        self._per_file[num] = self._per_file.get(num, 0) + 1

    def _collect(self) -> None:
        """Delete the segments no longer needed: before the read position and every
        record still outstanding or to deliver again."""
        if self._oldest_num >= self._read_num:
            return
        lowest = min([self._read_num, *self._per_file])
        if self._revisit:
            lowest = min(lowest, min(entry[1] for entry in self._revisit))
        while self._oldest_num < lowest:
            with contextlib.suppress(FileNotFoundError):
                self._segment(self._oldest_num).unlink()
            self._oldest_num += 1
            self._unsynced += 1

    # --- metadata and recovery ----------------------------------------------------------------

    def _segment(self, num: int) -> Path:
        return self.directory / f"{self.name}.diskqueue.{num:06d}.dat"

    def _meta_path(self) -> Path:
        return self.directory / f"{self.name}{_META_SUFFIX}"

    def _own_files(self) -> list[Path]:
        """This queue's segments (with .bad ones) and metadata."""
        if not self.directory.is_dir():
            return []
        prefix = f"{self.name}.diskqueue."
        return [p for p in self.directory.iterdir() if p.name.startswith(prefix)]

    def _segment_nums(self) -> list[int]:
        nums = []
        for path in self._own_files():
            match = _SEGMENT_NAME.fullmatch(path.name)
            if match is not None and match["name"] == self.name:
                nums.append(int(match["num"]))
        return sorted(nums)

    def _meta(self) -> dict[str, Any]:
        """What is written to the metadata file."""
        revisit = [
            [seq, num, off, msg.attempts, msg.due_wall_ns]
            for seq, (num, off, msg) in sorted(self._outstanding.items())
        ]
        revisit += [list(entry) for entry in self._revisit]
        return {
            "format": META_FORMAT,
            "version": META_VERSION,
            "read": [self._read_num, self._read_off, self._read_seq],
            "write": [self._write_num, self._write_off, self._write_seq],
            "revisit": revisit,
        }

    def _write_meta(self) -> None:
        """tmp file, fsync, rename: the old metadata or the new one, never half of one."""
        path = self._meta_path()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(self._meta(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _read_meta(self) -> dict[str, Any] | None:
        """The metadata if it is there and sound; a damaged one is logged and ignored."""
        path = self._meta_path()
        try:
            meta = json.loads(path.read_bytes())
            if meta.get("format") != META_FORMAT or meta.get("version") != META_VERSION:
                raise ValueError("not a taskdash diskqueue metadata file")
            for key in ("read", "write"):
                if len(meta[key]) != 3 or not all(isinstance(v, int) and v >= 0 for v in meta[key]):
                    raise ValueError(f"bad {key} position")
            for entry in meta["revisit"]:
                if len(entry) != 5 or not all(isinstance(v, int) for v in entry):
                    raise ValueError("bad revisit entry")
            return meta  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("diskqueue_meta_unreadable", queue=self.name, path=str(path), error=str(exc))
            return None

    def _load(self) -> None:
        """Positions from the metadata (or the segments alone), then the true end of the data."""
        nums = self._segment_nums()
        meta = self._read_meta()
        self._oldest_num = nums[0] if nums else 0
        if meta is not None:
            self._read_num, self._read_off, self._read_seq = meta["read"]
            self._write_num, self._write_off, self._write_seq = meta["write"]
            self._revisit = deque(sorted(tuple(entry) for entry in meta["revisit"]))  # type: ignore[misc]
        elif nums:
            first = nums[0]
            self._read_num, self._read_off = first, 0
            self._read_seq = _first_seq(self._segment(first)) or 0
            self._write_num, self._write_off, self._write_seq = first, 0, self._read_seq
            log.warning("diskqueue_meta_missing", queue=self.name, segments=len(nums))
        if nums:
            self._oldest_num = min(self._oldest_num, self._read_num)
            self._recover_tail(nums)
        if (self._read_num, self._read_seq) > (self._write_num, self._write_seq):
            log.error(
                "diskqueue_read_past_write",
                queue=self.name,
                read=[self._read_num, self._read_seq],
                write=[self._write_num, self._write_seq],
            )
            self._read_num, self._read_off, self._read_seq = self._write_num, 0, self._write_seq
            if self._write_off:
                self._read_off = self._write_off
        self._read_seq = min(self._read_seq, self._write_seq)
        if self._write_off and not self._segment(self._write_num).exists():
            log.error("diskqueue_segment_missing", queue=self.name, segment=self._write_num)
            self._write_off = 0
        if nums or meta is not None:
            log.info(
                "diskqueue_opened",
                queue=self.name,
                depth=self.depth,
                segments=len(nums),
                redeliver=len(self._revisit),
            )

    def _recover_tail(self, nums: list[int]) -> None:
        """Records written after the last metadata sync count; a torn last record goes."""
        last = nums[-1]
        if last < self._write_num:
            return  # the write segment was never created
        if last > self._write_num:
            seq = _first_seq(self._segment(last))
            if seq is None:
                log.error("diskqueue_segment_unreadable", queue=self.name, segment=last)
                self._write_num, self._write_off = last + 1, 0
                return
            self._write_num, self._write_off, self._write_seq = last, _SEG_HEAD.size, seq
        path = self._segment(last)
        if self._write_off == 0:
            seq = _first_seq(path)
            if seq is None:  # created, header never written whole: start it again
                return
            self._write_off, self._write_seq = _SEG_HEAD.size, seq
        end, count, problem = _scan(path, self._write_off)
        self._write_seq += count
        size = path.stat().st_size
        if count:
            log.info("diskqueue_recovered_records", queue=self.name, path=str(path), count=count)
        if end < size:
            if problem != "torn":
                aside = path.with_name(f"{path.name}.bad-tail-{time.time_ns()}")
                aside.write_bytes(path.read_bytes()[end:])
                log.error(
                    "diskqueue_corrupt",
                    queue=self.name,
                    path=str(path),
                    kept_as=str(aside),
                    offset=end,
                    error=problem,
                )
            else:
                log.warning(
                    "diskqueue_torn_write_dropped",
                    queue=self.name,
                    path=str(path),
                    bytes=size - end,
                )
            with path.open("r+b") as f:
                f.truncate(end)
        self._write_off = end

    def _close_files(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _first_seq(path: Path) -> int | None:
    """A segment's first record sequence number, or None if its header is not ours."""
    try:
        with path.open("rb") as src:
            magic, seq = _SEG_HEAD.unpack(src.read(_SEG_HEAD.size))
    except (OSError, struct.error):
        return None
    return int(seq) if magic == SEGMENT_MAGIC else None


def _scan(path: Path, offset: int) -> tuple[int, int, str]:
    """From ``offset``: end of the last whole, valid record, how many, and why it stopped."""
    count = 0
    with path.open("rb") as src:
        size = os.fstat(src.fileno()).st_size
        src.seek(offset)
        while offset < size:
            head = src.read(_REC_HEAD.size)
            if len(head) < _REC_HEAD.size:
                return offset, count, "torn"
            length, crc = _REC_HEAD.unpack(head)
            if length < _PAYLOAD_HEAD.size:
                return offset, count, f"invalid record length {length}"
            if offset + _REC_HEAD.size + length > size:
                return offset, count, "torn"
            if zlib.crc32(src.read(length)) != crc:
                return offset, count, "checksum mismatch"
            offset += _REC_HEAD.size + length
            count += 1
    return offset, count, ""


class MessageQueue:
    """A FIFO with at most ``mem_size`` messages in memory and the rest on disk.

    New messages go to memory only while nothing waits on disk, so memory always holds the
    oldest: order is kept across the two. Without a disk (no data dir) memory is unbounded;
    an ephemeral queue (``drop_overflow``) drops what does not fit, as nsqd does.
    """

    def __init__(
        self, mem_size: int, disk: DiskQueue | None = None, *, drop_overflow: bool = False
    ) -> None:
        self.mem_size = mem_size
        self.disk = disk
        self.drop_overflow = drop_overflow
        self.memory: deque[Message] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.memory) + self.backend_depth

    def __bool__(self) -> bool:
        return bool(self.memory) or self.backend_depth > 0

    @property
    def backend_depth(self) -> int:
        """Messages waiting on disk."""
        return self.disk.depth if self.disk is not None else 0

    def extend(self, messages: Iterable[Message]) -> None:
        """At the end: memory while it has room and the disk is empty, else the disk."""
        batch = list(messages)
        if self.disk is None:
            if self.drop_overflow:
                room = max(0, self.mem_size - len(self.memory))
                self.dropped += max(0, len(batch) - room)
                batch = batch[:room]
            self.memory.extend(batch)
            return
        if self.disk.depth == 0:
            room = max(0, self.mem_size - len(self.memory))
            self.memory.extend(batch[:room])
            batch = batch[room:]
        if batch:
            self.disk.append(batch)

    def append(self, msg: Message) -> None:
        """One message at the end."""
        self.extend((msg,))

    def push_front(self, messages: Iterable[Message]) -> None:
        """Older messages than any held (restored from the last stop), in memory."""
        self.memory.extendleft(reversed(list(messages)))

    def popleft(self) -> Message | None:
        """The oldest message (memory first, it holds the oldest), or None."""
        if self.memory:
            return self.memory.popleft()
        if self.disk is not None:
            return self.disk.popleft()
        return None

    def release(self, msg: Message) -> None:
        """The message is done with: its disk record (if any) may go."""
        if msg.disk_seq >= 0 and self.disk is not None:
            self.disk.release(msg.disk_seq)
        msg.disk_seq = -1

    def memory_messages(self) -> list[Message]:
        """A copy of what is in memory (one C-level step: safe from the watchdog thread)."""
        return list(self.memory)

    def close(self) -> None:
        """Sync and close the disk part."""
        if self.disk is not None:
            self.disk.close()

    def delete(self) -> None:
        """Drop everything, files included."""
        self.memory.clear()
        if self.disk is not None:
            self.disk.delete()


@dataclass(frozen=True, slots=True)
class Storage:
    """Where and how queues are kept: memory only (no data dir), or memory + disk."""

    data_dir: Path | None
    mem_queue_size: int
    disk: DiskOptions

    def queue(self, name: str, *, ephemeral: bool) -> MessageQueue:
        """The queue for a topic (``name``) or channel (``topic:channel``)."""
        if ephemeral:
            # never on disk: what does not fit is dropped, as nsqd drops it (at 0, nsqd hands a
            # message only to a consumer waiting that instant; here one may wait in memory)
            return MessageQueue(max(self.mem_queue_size, 1), drop_overflow=True)
        if self.data_dir is None:
            return MessageQueue(self.mem_queue_size)
        disk = DiskQueue(self.data_dir, name, self.disk)
        disk.create()
        return MessageQueue(self.mem_queue_size, disk)

    def names(self) -> list[str]:
        """Queues found in the data dir."""
        return queue_names(self.data_dir) if self.data_dir is not None else []
