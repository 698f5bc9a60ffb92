"""The seed's message and record shapes, with their exact JSON keys. No I/O here.

Decoding uses msgspec: fast on the hot path (every NSQ message goes through it) and precise
errors that name the offending field, which :func:`decode` turns into our ValidationError.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from taskdash.errors import ValidationError

# \Z, not $: $ also matches before a final newline, which let "id\n" through
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^\S(.*\S)?\Z")]
Name = Annotated[str, msgspec.Meta(max_length=256)]
Url = Annotated[str, msgspec.Meta(max_length=2048)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Short = Annotated[str, msgspec.Meta(max_length=64)]


class Model(msgspec.Struct, kw_only=True):
    """Base of the seed's records: unknown keys are ignored (publishers may add fields)."""

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict with the seed's keys."""
        return msgspec.structs.asdict(self)


class TaskService(Model):
    """A task service announcing itself (NSQ topic ``taskdash.service``)."""

    id: Id
    name: Name = ""
    type: Name = ""
    url: Url = ""
    description: Text = ""
    reserved: Text = ""


class HeartBeat(Model):
    """A task service saying it is alive (NSQ topic ``taskdash.heartbeat``)."""

    id: Id
    reserved: Text = ""


class TaskMetaData(Model):
    """One task as listed by a service's URL (seed status examples: running, finish...)."""

    id: Id
    name: Name = ""
    url: Url = ""
    description: Text = ""
    status: Short = ""
    reserved: Text = ""


class TaskManager(Model):
    """Who a task is bound to (claimed by or assigned to ``user``); ``group_id`` reserved."""

    id: Id
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    group_id: Name = ""
    reserved: Text = ""


M = TypeVar("M", bound=Model)

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _field_of(err: msgspec.ValidationError) -> str | None:
    text = str(err)
    if " - at `$." in text:
        return text.rsplit(" - at `$.", 1)[1].rstrip("`").split("[", 1)[0]
    if text.startswith("Object missing required field `"):
        return text.split("`")[1]
    return None


def decode(model: type[M], data: bytes | str) -> M:
    """Decode JSON ``data`` as ``model``; raise ValidationError naming the field and the reason.

    Readers dead-letter whatever this raises, so an error not foreseen here still cannot block
    a topic; the ones foreseen get a clearer reason.
    """
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{model.__name__}: {exc}", field=_field_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"{model.__name__}: not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec lets it through for bytes inside a string
        raise ValidationError(f"{model.__name__}: not valid UTF-8: {exc}") from None


def convert(model: type[M], obj: Any) -> M:
    """Validate an already-parsed object (e.g. one item of a fetched list) as ``model``."""
    try:
        return msgspec.convert(obj, model)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{model.__name__}: {exc}", field=_field_of(exc)) from None
