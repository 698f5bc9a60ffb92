"""``taskdash demo``: the whole system on one machine, with simulated task services.

One supervisor process starts, all on 127.0.0.1: an nx-27017 store, ``taskdash run`` (with its
embedded NSQ broker), ``taskdash periodic``, five simulated task services and a few tasks
registered over TCP; it prints the dashboard's URL and an admin login, and stops everything
on Ctrl-C or SIGTERM (docs/demo.md).

- :mod:`.timing`: every delay and threshold of the demo, scaled by ``--speed`` (pure);
- :mod:`.config`: the config file the children run on (pure);
- :mod:`.processes`: a child process, started and stopped;
- :mod:`.services`: the simulated task services (HTTP metadata + heartbeats over NSQ);
- :mod:`.worker`: the service that leases periodic tasks over gRPC;
- :mod:`.tcp_tasks`: tasks registered over TCP with a daily window;
- :mod:`.runner`: starts the parts in order, stops them in reverse;
- :mod:`.cli`: the ``taskdash demo`` subcommand.
"""
