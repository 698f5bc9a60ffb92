"""The disk queue on real files: order, segments, restarts, crashes' leftovers, corruption."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import structlog

from taskdash.nsq.broker.diskqueue import DiskOptions, DiskQueue, MessageQueue, queue_names
from taskdash.nsq.broker.message import Message

SMALL = DiskOptions(max_bytes_per_file=300, sync_every=1000, sync_timeout=60.0)


def msgs(*bodies: str, start: int = 0) -> list[Message]:
    return [
        Message(b"%016x" % (start + i), body.encode(), 1000 + i) for i, body in enumerate(bodies)
    ]


def drain(queue: DiskQueue, release: bool = True) -> list[str]:
    """Every readable body in order; released unless asked not to."""
    out = []
    while (msg := queue.popleft()) is not None:
        out.append(msg.body.decode())
        if release:
            queue.release(msg.disk_seq)
    return out


def segments(directory: Path, name: str = "t") -> list[str]:
    return sorted(p.name for p in directory.glob(f"{name}.diskqueue.*.dat*"))


def test_fifo_across_segments_and_files_go_once_read(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", SMALL)
    bodies = [f"message-{i:03d}" for i in range(40)]
    queue.append(msgs(*bodies[:25]))
    queue.append(msgs(*bodies[25:], start=25))
    assert queue.depth == 40
    assert len(segments(tmp_path)) > 3  # 300-byte segments: rolled several times
    first = queue.popleft()
    assert first is not None and (first.id, first.timestamp, first.attempts) == (
        b"%016x" % 0,
        1000,
        0,
    )
    assert first.body == b"message-000"
    queue.release(first.disk_seq)
    assert drain(queue) == bodies[1:]
    assert queue.depth == 0
    assert len(segments(tmp_path)) == 1  # read and released: only the one being written stays
    queue.close()


def test_outstanding_records_keep_their_file_and_come_back_after_reopen(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", SMALL)
    queue.append(msgs(*(f"m{i:02d}" for i in range(30))))
    held = queue.popleft()
    assert held is not None
    held.attempts = 3  # delivered three times so far
    rest = drain(queue)
    assert rest == [f"m{i:02d}" for i in range(1, 30)]
    assert segments(tmp_path)[0].endswith("000000.dat")  # the held record's file is kept
    queue.close()

    reopened = DiskQueue(tmp_path, "t", SMALL)
    assert reopened.depth == 1
    again = reopened.popleft()
    assert again is not None and again.body == b"m00" and again.attempts == 3
    reopened.release(again.disk_seq)
    assert len(segments(tmp_path)) == 1
    reopened.append(msgs("after"))
    assert drain(reopened) == ["after"]
    reopened.close()


def test_records_written_after_the_last_sync_are_found(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", SMALL)
    queue.create()  # metadata says: empty
    queue.append(msgs(*(f"m{i:02d}" for i in range(12))))
    # no close: as after a kill, the metadata is behind the segments
    found = DiskQueue(tmp_path, "t", SMALL)
    assert drain(found) == [f"m{i:02d}" for i in range(12)]
    found.close()


def test_a_torn_last_record_is_cut_off_and_writing_goes_on(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", DiskOptions())
    queue.append(msgs("one", "two"))
    queue.close()
    path = tmp_path / "t.diskqueue.000000.dat"
    whole = path.read_bytes()
    path.write_bytes(whole + whole[12:30])  # half a third record, as a crash mid-write leaves
    with structlog.testing.capture_logs() as logs:
        again = DiskQueue(tmp_path, "t", DiskOptions())
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "diskqueue_torn_write_dropped"
    ]
    assert path.read_bytes() == whole
    again.append(msgs("three", start=2))
    assert drain(again) == ["one", "two", "three"]
    again.close()


def test_a_corrupt_segment_is_put_aside_and_reading_goes_on(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", SMALL)
    queue.append(msgs(*(f"m{i:02d}" for i in range(30))))
    queue.close()
    first = tmp_path / "t.diskqueue.000000.dat"
    data = bytearray(first.read_bytes())
    data[12 + 49 + 20] ^= 0xFF  # a flipped byte in the second record (records are 49 bytes)
    first.write_bytes(bytes(data))
    again = DiskQueue(tmp_path, "t", SMALL)
    with structlog.testing.capture_logs() as logs:
        got = drain(again)
    [error] = [e for e in logs if e["event"] == "diskqueue_corrupt"]
    assert error["log_level"] == "error" and "checksum" in error["error"]
    assert error["kept_as"].endswith("t.diskqueue.000000.dat.bad")
    assert (tmp_path / "t.diskqueue.000000.dat.bad").exists()
    # 5 records per 300-byte segment: the first was read, the other 4 of that file are lost
    assert got == ["m00"] + [f"m{i:02d}" for i in range(5, 30)]
    assert error["lost_at_most"] == 4
    assert again.depth == 0
    again.close()


def test_a_garbage_length_never_allocates_and_is_reported(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", DiskOptions())
    queue.append(msgs("one", "two"))
    queue.close()
    path = tmp_path / "t.diskqueue.000000.dat"
    data = bytearray(path.read_bytes())
    data[12:16] = struct.pack(">I", 2**31)  # first record claims 2 GiB
    path.write_bytes(bytes(data))
    with structlog.testing.capture_logs() as logs:
        again = DiskQueue(tmp_path, "t", DiskOptions())
        assert drain(again) == []
    assert any(e["event"] == "diskqueue_corrupt" and "length" in e["error"] for e in logs), logs
    again.append(msgs("fresh"))
    assert drain(again) == ["fresh"]
    again.close()


def test_damaged_metadata_is_logged_and_the_segments_are_read(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", SMALL)
    queue.append(msgs(*(f"m{i:02d}" for i in range(15))))
    queue.close()
    (tmp_path / "t.diskqueue.meta.json").write_text('{"format": "taskdash-diskqueue", "ver')
    with structlog.testing.capture_logs() as logs:
        again = DiskQueue(tmp_path, "t", SMALL)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["diskqueue_meta_unreadable"]
    assert drain(again) == [f"m{i:02d}" for i in range(15)]
    again.close()


def test_metadata_is_json_and_names_are_found(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "topic:channel", DiskOptions())
    queue.create()
    meta = json.loads((tmp_path / "topic:channel.diskqueue.meta.json").read_text())
    assert meta["format"] == "taskdash-diskqueue" and meta["revisit"] == []
    DiskQueue(tmp_path, "other", DiskOptions()).append(msgs("x"))
    assert queue_names(tmp_path) == ["other", "topic:channel"]


def test_rename_hands_the_files_over(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, "t", SMALL)
    queue.append(msgs(*(f"m{i:02d}" for i in range(20))))
    queue.rename("t:ch")
    assert segments(tmp_path) == []
    assert drain(queue) == [f"m{i:02d}" for i in range(20)]
    queue.close()
    assert queue_names(tmp_path) == ["t:ch"]


def test_message_queue_keeps_order_between_memory_and_disk(tmp_path: Path) -> None:
    queue = MessageQueue(3, DiskQueue(tmp_path, "t", SMALL))
    queue.extend(msgs("a", "b"))
    queue.extend(msgs("c", "d", "e", start=2))  # c fills memory, d and e to disk
    assert (len(queue.memory), queue.backend_depth) == (3, 2)
    first = queue.popleft()
    assert first is not None and first.body == b"a"
    queue.append(msgs("f", start=5)[0])  # the disk is not empty: f goes behind e
    out = []
    while (msg := queue.popleft()) is not None:
        out.append(msg.body.decode())
        queue.release(msg)
    assert out == ["b", "c", "d", "e", "f"]


def test_ephemeral_queue_drops_what_does_not_fit() -> None:
    queue = MessageQueue(2, drop_overflow=True)
    queue.extend(msgs("a", "b", "c"))
    assert [m.body for m in queue.memory_messages()] == [b"a", b"b"] and queue.dropped == 1
