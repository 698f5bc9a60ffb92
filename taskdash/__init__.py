"""TaskDash: a registry and dashboard for task services (NSQ -> MongoDB)."""

__version__ = "0.1.0"
