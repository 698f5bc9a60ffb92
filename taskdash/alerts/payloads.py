"""What a webhook receives: the event as plain JSON, or a Slack-compatible message.

Pure functions, no I/O. The body of a delivery is the same bytes on every attempt (only the
signature's timestamp changes), so a receiver can deduplicate on ``id``. Service ids and
names come from outsiders: in Slack's format they are escaped (``<``, ``>``, ``&``), so a
service called ``<!channel>`` cannot ping a channel.
"""

from __future__ import annotations

from typing import Any

import msgspec

from taskdash.store.times import iso

SUMMARY = "alerts.suppressed"
#: a title longer than this is cut (a subject is an outsider's text)
MAX_TITLE = 300

_TITLES = {
    "service.stale": "Service {subject} is stale: {reason}",
    "service.offline": "Service {subject} is offline: {reason}",
    "service.online": "Service {subject} is back online: {reason}",
    "periodic.task_dead": (
        "Periodic task {task_id} ({task_type}) of {service}/{queue} is dead after "
        "{attempts} attempts"
    ),
    SUMMARY: (
        "{suppressed} more alert(s) about {subject} held back (at most {limit} per "
        "{window_seconds:g} s); the last: {last_title}"
    ),
}
_EMOJI = {
    "service.stale": ":warning:",
    "service.offline": ":red_circle:",
    "service.online": ":large_green_circle:",
    "periodic.task_dead": ":skull:",
    SUMMARY: ":mute:",
}


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def title(kind: str, subject: str, details: dict[str, Any]) -> str:
    """One line saying what happened (a kind without its own template: ``kind: subject``)."""
    template = _TITLES.get(kind, "{kind}: {subject}")
    try:
        text = template.format_map(_Missing(details, kind=kind, subject=subject))
    except (ValueError, TypeError):  # a detail of another type than the template expects
        text = f"{kind}: {subject}"
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1] + "…"


def event(delivery: dict[str, Any]) -> dict[str, Any]:
    """The event as the ``json`` format sends it."""
    return {
        "id": delivery["event"],
        "kind": delivery["kind"],
        "subject": delivery["subject"],
        "title": delivery["title"],
        "at": iso(delivery["at"]),
        "details": delivery.get("details") or {},
        "webhook": delivery["webhook"],
    }


def slack_escape(text: str) -> str:
    """Slack's three control characters as entities (its documented escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack(delivery: dict[str, Any]) -> dict[str, Any]:
    """``{"text": ...}`` (what every Slack-compatible receiver reads) plus blocks."""
    ev = event(delivery)
    emoji = _EMOJI.get(ev["kind"], ":bell:")
    text = f"{emoji} {slack_escape(ev['title'])}"
    context = f"{slack_escape(ev['kind'])} · {slack_escape(ev['subject'])} · {ev['at']}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def _stored_int(value: Any) -> Any:
    """Numbers read back from the store may be BSON's Int64, an int subclass msgspec refuses."""
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_stored_int)


def body(fmt: str, delivery: dict[str, Any]) -> bytes:
    """The request body for a webhook of format ``fmt`` (``json`` or ``slack``)."""
    return _ENCODER.encode(slack(delivery) if fmt == "slack" else event(delivery))
