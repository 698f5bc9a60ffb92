"""Response bodies -> validated records: a table of inputs and expected outputs."""

from __future__ import annotations

import json

import pytest

from taskdash.fetcher.errors import FetchError, ParseError, Refused
from taskdash.fetcher.parse import MAX_ERRORS, parse_listing
from taskdash.models import TaskMetaData


def body(value: object) -> bytes:
    return json.dumps(value).encode()


T1 = {"id": "t1", "name": "one", "url": "u", "description": "d", "status": "running",
      "reserved": "r"}  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    [
        body([T1]),
        body({"tasks": [T1]}),
        body({"data": [T1]}),
        body({"tasks": [T1], "data": "ignored when tasks is there"}),
        b"\xef\xbb\xbf" + body([T1]),
        body([{**T1, "extra": 1}]),
    ],
)
def test_accepted_shapes(raw: bytes) -> None:
    listing = parse_listing(raw)
    assert listing.tasks == [TaskMetaData(**T1)]
    assert (listing.bad, listing.errors, listing.still_listed) == (0, [], set())


def test_missing_optional_fields_default_to_empty() -> None:
    (only,) = parse_listing(body([{"id": "x"}])).tasks
    assert only == TaskMetaData(id="x", name="", url="", description="", status="", reserved="")


@pytest.mark.parametrize(
    ("record", "error", "still_listed"),
    [
        ({"name": "n"}, "Object missing required field `id`", set()),
        ({"id": ""}, "at `$.id`", set()),
        ({"id": 5}, "Expected `str`, got `int` - at `$.id`", set()),
        ({"id": "t9", "status": 3}, "Expected `str`, got `int` - at `$.status`", {"t9"}),
        ({"id": "t9", "name": "x" * 300}, "at `$.name`", {"t9"}),
        ("text", "Expected `object`, got `str`", set()),
        (None, "Expected `object`, got `null`", set()),
    ],
)
def test_bad_records_are_skipped_and_explained(
    record: object, error: str, still_listed: set[str]
) -> None:
    listing = parse_listing(body([T1, record]))
    assert listing.tasks == [TaskMetaData(**T1)]
    assert listing.bad == 1
    assert listing.errors[0].startswith("record 1: TaskMetaData: ")
    assert error in listing.errors[0]
    assert listing.still_listed == still_listed


def test_duplicates_count_as_bad_and_the_first_wins() -> None:
    listing = parse_listing(body([T1, {**T1, "name": "two"}]))
    assert [t.name for t in listing.tasks] == ["one"]
    assert (listing.bad, listing.errors) == (1, ["record 1: duplicate id 't1'"])


def test_only_the_first_few_errors_are_kept() -> None:
    listing = parse_listing(body([{"no": "id"}] * 10))
    assert (listing.bad, len(listing.errors)) == (10, MAX_ERRORS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "response body is empty"),
        (b"  \n", "response body is empty"),
        (b"[{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"42", "not a JSON array of tasks nor an object holding one"),
        (b"null", "not a JSON array of tasks nor an object holding one"),
        (body({"items": []}), "no 'tasks' or 'data' array (keys: items)"),
        (body({}), "no 'tasks' or 'data' array (keys: none)"),
        (body({"tasks": None}), "'tasks' is not an array of tasks"),
        (body({"data": {"id": "x"}}), "'data' is not an array of tasks"),
    ],
)
def test_bodies_that_are_not_listings(raw: bytes, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_listing(raw)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (FetchError("boom"), "error"),
        (FetchError("HTTP 503", status=503), "http_503"),
        (FetchError("timed out", reason="timeout"), "timeout"),
        (FetchError("no Location", status=302, reason="redirect"), "redirect"),
        (Refused("169.254.169.254 is refused"), "refused"),
        (ParseError("not JSON", status=200), "bad_listing"),  # the status says nothing here
    ],
)
def test_every_failure_has_a_short_reason_for_summaries(error: FetchError, reason: str) -> None:
    assert error.reason == reason
