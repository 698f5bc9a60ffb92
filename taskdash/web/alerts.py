"""``GET /api/v1/services/<id>/alerts``: a service's latest alert deliveries and attempts.

Any logged-in user, like the service's history: what was sent about a service says nothing
the service page does not. The webhooks' URLs and secrets are never shown, only their names.
"""

from __future__ import annotations

from taskdash.store.alerts import recent
from taskdash.web.api import SERVICE, ServiceApi
from taskdash.web.base import bounded
from taskdash.web.openapi import Operation, Param

LIMIT = Param("limit", "how many deliveries at most", "integer", minimum=1, maximum=200, default=20)


class ServiceAlertsHandler(ServiceApi):
    """Deliveries about one service, newest event first, each with its attempts."""

    OPENAPI = {
        "get": Operation(
            "Alert deliveries about a service, newest first, with every attempt",
            params=(LIMIT,),
            answers={200: ("{id, alerts: [...]}", "Any"), 404: ("no such", "")},
        )
    }

    @bounded
    async def get(self, service_id: str) -> None:
        limit = self.params()["limit"]
        await self.service(service_id)
        self.send_json({"id": service_id, "alerts": await recent(self.store, service_id, limit)})


ROUTES = [(rf"/api/v1/services/{SERVICE}/alerts", ServiceAlertsHandler)]
