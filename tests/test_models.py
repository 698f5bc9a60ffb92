"""Models: the seed's exact keys round-trip; bad documents are refused with the field named."""

from __future__ import annotations

import json

import pytest

from taskdash.errors import ValidationError
from taskdash.models import HeartBeat, TaskManager, TaskMetaData, TaskService, convert, decode

# What a Go publisher's json.Marshal of the seed's structs produces (all keys, all strings).
GO_SERVICE = (
    b'{"id":"svc-1","name":"crawler","type":"batch","url":"http://10.0.0.5:9000/tasks",'
    b'"description":"\xe7\x88\xac\xe8\x99\xab","reserved":""}'
)


@pytest.mark.parametrize(
    ("model", "record"),
    [
        (TaskService, {"id": "s", "name": "n", "type": "t", "url": "http://u", "description": "d",
                       "reserved": "r"}),
        (HeartBeat, {"id": "s", "reserved": "r"}),
        (TaskMetaData, {"id": "t", "name": "n", "url": "http://u", "description": "d",
                        "status": "running", "reserved": ""}),
        (TaskManager, {"id": "t", "user": "alice", "group_id": "", "reserved": ""}),
    ],
)  # fmt: skip
def test_round_trip_with_the_seed_keys(model: type, record: dict[str, str]) -> None:
    obj = decode(model, json.dumps(record).encode())
    assert obj.to_dict() == record
    assert list(obj.to_dict()) == list(record)
    assert convert(model, record) == obj


def test_go_publisher_output_is_accepted() -> None:
    svc = decode(TaskService, GO_SERVICE)
    assert svc.id == "svc-1" and svc.description == "爬虫"


def test_extra_keys_are_ignored_and_missing_optional_default_empty() -> None:
    hb = decode(HeartBeat, b'{"id":"x","ts":123,"host":"h"}')
    assert hb == HeartBeat(id="x", reserved="")


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"id": 5}', "id", "Expected `str`, got `int`"),
        (b"{}", "id", "missing required field `id`"),
        (b'{"id": ""}', "id", "length >= 1"),
        (b'{"id": " padded "}', "id", "matching regex"),
        (b'{"id": "trailing-newline\\n"}', "id", "matching regex"),
        (b'{"id": "' + b"x" * 129 + b'"}', "id", "length <= 128"),
        (b'{"id": "a", "name": ["x"]}', "name", "Expected `str`, got `array`"),
        (b'{"id": "a", "url": null}', "url", "Expected `str`, got `null`"),
        (b'{"id": "a", "description": "' + b"d" * 4097 + b'"}', "description", "length <= 4096"),
        (b"[]", None, "Expected `object`, got `array`"),
        (b"not json", None, "not valid JSON"),
        (b"", None, "not valid JSON"),
        (b'{"id": "a"', None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        # invalid UTF-8 inside a string: msgspec raises UnicodeDecodeError, not its own error
        (b'{"id": "a\xffb"}', None, "not valid UTF-8"),
        (b'{"id": "a", "reserved": "\xc3"}', None, "not valid UTF-8"),
    ],
)
def test_bad_documents_name_the_field(body: bytes, field: str | None, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode(TaskService, body)
    assert info.value.field == field
    assert reason in str(info.value)
    assert str(info.value).startswith("TaskService: ")


def test_convert_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        convert(TaskMetaData, {"id": "t", "status": 3})
    assert info.value.field == "status"
    with pytest.raises(ValidationError) as info:
        convert(TaskManager, {"id": "t", "user": ""})
    assert info.value.field == "user"
