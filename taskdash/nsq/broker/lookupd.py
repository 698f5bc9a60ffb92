"""nsqlookupd's read API answering for this one broker, so readers can discover it."""

from __future__ import annotations

import tornado.web

from taskdash.nsq.broker.http import ApiError, BaseHandler, HttpContext, PingHandler, make_app
from taskdash.nsq.broker.options import VERSION


class LookupHandler(BaseHandler):
    """nsqlookupd ``GET /lookup?topic=T``: this broker is the one producer of every topic."""

    def get(self) -> None:
        """Flat v1 shape: ``{"channels": [...], "producers": [...]}``."""
        name = self.required("topic", "MISSING_ARG_TOPIC")
        topic = self.ctx.registry.topics.get(name)
        if topic is None:
            raise ApiError(404, "TOPIC_NOT_FOUND")
        self.reply_json({"channels": sorted(topic.channels), "producers": [self.ctx.peer_info()]})


class LookupTopicsHandler(BaseHandler):
    """nsqlookupd ``GET /topics``."""

    def get(self) -> None:
        """Every known topic."""
        self.reply_json({"topics": sorted(self.ctx.registry.topics)})


class LookupChannelsHandler(BaseHandler):
    """nsqlookupd ``GET /channels?topic=T``."""

    def get(self) -> None:
        """Channels of a topic (empty when unknown, as nsqlookupd answers)."""
        topic = self.ctx.registry.topics.get(self.required("topic", "MISSING_ARG_TOPIC"))
        self.reply_json({"channels": sorted(topic.channels) if topic else []})


class LookupNodesHandler(BaseHandler):
    """nsqlookupd ``GET /nodes``: one node, this broker."""

    def get(self) -> None:
        """PeerInfo plus its topics and (never set) tombstones."""
        topics = sorted(self.ctx.registry.topics)
        node = self.ctx.peer_info() | {"tombstones": [False] * len(topics), "topics": topics}
        self.reply_json({"producers": [node]})


class LookupInfoHandler(BaseHandler):
    """nsqlookupd ``GET /info``."""

    def get(self) -> None:
        """Just the version."""
        self.reply_json({"version": VERSION})


def lookupd_app(ctx: HttpContext) -> tornado.web.Application:
    """nsqlookupd's read API, answering for this single broker."""
    return make_app(
        [
            (r"/ping", PingHandler),
            (r"/lookup", LookupHandler),
            (r"/topics", LookupTopicsHandler),
            (r"/channels", LookupChannelsHandler),
            (r"/nodes", LookupNodesHandler),
            (r"/info", LookupInfoHandler),
        ],
        ctx,
    )
