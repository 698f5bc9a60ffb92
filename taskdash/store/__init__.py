"""Everything MongoDB: the only package that imports pymongo."""

from taskdash.store.mongo import Store, deadline, translated

__all__ = ["Store", "deadline", "translated"]
