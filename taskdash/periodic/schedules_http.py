"""HTTP endpoints of schedules: ``.../queues/{q}/schedules[/{id}[/runs|pause|resume]]``.

Same authentication, errors and limits as the rest of the periodic HTTP API
(:mod:`taskdash.periodic.http`); the rules are in :mod:`taskdash.periodic.schedules`.
"""

from __future__ import annotations

from typing import Any

from taskdash.periodic.http import QUEUE, Handler
from taskdash.periodic.leasing import Leasing
from taskdash.periodic.schedules import Schedules
from taskdash.settings import PeriodicSettings

NO_LIMIT = 2**63 - 1  # "before" when not given: every run


class ScheduleHandler(Handler):
    """Shared by the schedule endpoints: they also hold the :class:`Schedules`."""

    schedules: Schedules

    def initialize(  # type: ignore[override]
        self, leasing: Leasing, settings: PeriodicSettings, schedules: Schedules
    ) -> None:
        super().initialize(leasing, settings)
        self.schedules = schedules


class SchedulesHandler(ScheduleHandler):
    """POST: create a schedule (201). GET: the queue's schedules by id, paged by ``after``."""

    async def post(self, service: str, queue: str) -> None:
        view = await self.schedules.create(self.caller(service), queue, self.body())
        self.reply(view, 201)

    async def get(self, service: str, queue: str) -> None:
        after = self.get_query_argument("after", "")
        limit = self.query_int("limit", 0)
        found = await self.schedules.list(self.caller(service), queue, after, limit)
        self.reply({"schedules": found, "next_after": found[-1]["schedule_id"] if found else None})


class OneScheduleHandler(ScheduleHandler):
    """GET: one schedule with its runs and their tasks' states. DELETE: remove it."""

    async def get(self, service: str, queue: str, schedule_id: str) -> None:
        self.reply(await self.schedules.get(self.caller(service), queue, schedule_id))

    async def delete(self, service: str, queue: str, schedule_id: str) -> None:
        await self.schedules.delete(self.caller(service), queue, schedule_id)
        self.reply({"success": True})


class RunsHandler(ScheduleHandler):
    """GET: the runs that created a task (the tasks), newest first; ``next_before`` pages."""

    async def get(self, service: str, queue: str, schedule_id: str) -> None:
        who, before = self.caller(service), self.query_int("before", NO_LIMIT, saturate=True)
        limit = self.query_int("limit", 0)
        runs, following = await self.schedules.runs(who, queue, schedule_id, before, limit)
        self.reply({"runs": runs, "next_before": following})


class ScheduleActionHandler(ScheduleHandler):
    """POST pause / resume: the schedule as it is afterwards."""

    async def post(self, service: str, queue: str, schedule_id: str, action: str) -> None:
        who = self.caller(service)
        if action == "pause":
            self.reply(await self.schedules.pause(who, queue, schedule_id))
        else:
            self.reply(await self.schedules.resume(who, queue, schedule_id))


def routes(schedules: Schedules) -> list[tuple[str, type, dict[str, Any]]]:
    """The schedule routes, for :func:`taskdash.periodic.http.make_app`."""
    leasing = schedules.leasing
    res = {"leasing": leasing, "settings": leasing.settings, "schedules": schedules}
    one = rf"{QUEUE}/schedules/([^/]+)"
    return [
        (rf"{QUEUE}/schedules", SchedulesHandler, res),
        (one, OneScheduleHandler, res),
        (rf"{one}/runs", RunsHandler, res),
        (rf"{one}/(pause|resume)", ScheduleActionHandler, res),
    ]
