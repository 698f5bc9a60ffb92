"""The periodic task service of seed 000: a task queue with leases over gRPC and HTTP.

``leasing`` holds the rules on the store, ``grpc`` and ``http`` translate them to their
protocols, ``service`` runs both in one process (``taskdash periodic``).
"""
