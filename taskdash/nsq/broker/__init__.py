"""Our own nsqd (TCP protocol V2 + HTTP API) and nsqlookupd read API, faithful to nsq v1.3.0."""

from taskdash.nsq.broker.options import VERSION, Options
from taskdash.nsq.broker.protocol import ProtocolError
from taskdash.nsq.broker.server import Broker

__all__ = ["VERSION", "Broker", "Options", "ProtocolError"]
