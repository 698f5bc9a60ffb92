"""Everything NSQ: the embedded broker, the readers (the only pynsq users), publishing helpers."""
