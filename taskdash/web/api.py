"""The read-only JSON API over stored services.

Every handler reads through the :class:`~taskdash.web.base.StoreGate`: while MongoDB is known
down the answer is 503 ``store_unavailable`` at once.
"""

from __future__ import annotations

import tornado.web

from taskdash.store.deadletters import list_dead_letters
from taskdash.store.services import get_service, list_services
from taskdash.store.status import history
from taskdash.store.tasks import get_fetch_result, list_tasks
from taskdash.web.base import StoreHandler, bounded

STATUSES = ("online", "stale", "offline", "unknown")


class ServicesHandler(StoreHandler):
    """``GET /api/services?status=&limit=&skip=``."""

    @bounded
    async def get(self) -> None:
        status = self.get_query_argument("status", None)
        if status is not None and status not in STATUSES:
            raise tornado.web.HTTPError(400, "status must be one of %s", ", ".join(STATUSES))
        limit = self.int_argument("limit", 100, 1, 1000)
        skip = self.int_argument("skip", 0, 0, 10_000_000)
        services = await list_services(self.store, status=status, limit=limit, skip=skip)
        self.send_json({"services": services, "count": len(services)})


class ServiceHandler(StoreHandler):
    """``GET /api/services/<id>``."""

    @bounded
    async def get(self, service_id: str) -> None:
        service = await get_service(self.store, service_id)
        if service is None:
            raise tornado.web.HTTPError(404, "no service with this id")
        self.send_json(service)


class ServiceHistoryHandler(StoreHandler):
    """``GET /api/services/<id>/history?limit=``: state changes, newest first."""

    @bounded
    async def get(self, service_id: str) -> None:
        limit = self.int_argument("limit", 100, 1, 1000)
        if await get_service(self.store, service_id) is None:
            raise tornado.web.HTTPError(404, "no service with this id")
        events = await history(self.store, service_id, limit)
        self.send_json({"id": service_id, "history": events})


class DeadLettersHandler(StoreHandler):
    """``GET /api/dead-letters?topic=&limit=``: messages that could never be applied."""

    @bounded
    async def get(self) -> None:
        topic = self.get_query_argument("topic", None)
        limit = self.int_argument("limit", 100, 1, 1000)
        letters = await list_dead_letters(self.store, topic=topic, limit=limit)
        self.send_json({"dead_letters": letters, "count": len(letters)})


class TasksHandler(StoreHandler):
    """``GET /api/tasks?service_id=&status=&include_gone=&limit=&skip=``: tasks and bindings."""

    @bounded
    async def get(self) -> None:
        include_gone = self.get_query_argument("include_gone", "false")
        if include_gone not in ("true", "false"):
            raise tornado.web.HTTPError(400, "include_gone must be true or false")
        tasks = await list_tasks(
            self.store,
            service_id=self.get_query_argument("service_id", None),
            status=self.get_query_argument("status", None),
            include_gone=include_gone == "true",
            limit=self.int_argument("limit", 100, 1, 1000),
        )
        self.send_json({"tasks": tasks, "count": len(tasks)})


class FetchResultHandler(StoreHandler):
    """``GET /api/services/<id>/fetch``: the last metadata fetch of one service."""

    @bounded
    async def get(self, service_id: str) -> None:
        if await get_service(self.store, service_id) is None:
            raise tornado.web.HTTPError(404, "no service with this id")
        result = await get_fetch_result(self.store, service_id)
        if result is None:
            raise tornado.web.HTTPError(404, "this service was not fetched yet")
        self.send_json(result)


#: an id in a path, still percent-encoded: ids are at most 128 characters once decoded, and one
#: character may take 4 bytes of UTF-8, each written as 3 characters (%XX)
ID = r"([^/]{1,1536})"

ROUTES = [
    (r"/api/services", ServicesHandler),
    (rf"/api/services/{ID}", ServiceHandler),
    (rf"/api/services/{ID}/history", ServiceHistoryHandler),
    (rf"/api/services/{ID}/fetch", FetchResultHandler),
    (r"/api/tasks", TasksHandler),
    (r"/api/dead-letters", DeadLettersHandler),
]
