"""Everything MongoDB: the only package that imports pymongo."""

from taskdash.store.mongo import Store, translated

__all__ = ["Store", "translated"]
