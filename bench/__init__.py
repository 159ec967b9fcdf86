"""Conveyor's benchmarks: ``make bench`` or ``python -m bench --help``.

Never part of ``make test``: the figures depend on the machine and are read by people
(docs/benchmarks.md), not asserted. Every benchmark takes a :class:`bench.stores.StoreConfig`
and asks it for a fresh database URL per run (SQLite: a new file; PostgreSQL: a new
database on the server of ``--postgres-url``), so a store is added in one place
(:mod:`bench.stores`) and every benchmark runs against it.

Modules:

- :mod:`bench.enqueue`: bulk enqueue with ``Client.enqueue_many``;
- :mod:`bench.throughput`: workers draining no-op jobs, in-process and as one or two real
  ``conveyor worker --burst`` subprocesses;
- :mod:`bench.latency`: enqueue → handler start on an idle worker, same process and across
  processes;
- :mod:`bench.backlog`: throughput with 1,000,000 jobs queued against 10,000;
- :mod:`bench.memory`: RSS of an idle ``conveyor worker`` and (PostgreSQL) the statements
  it sends while idle;
- :mod:`bench.kinds`: the job kinds they run (``--import bench.kinds`` in subprocesses);
- :mod:`bench.report`: rows, targets, the printed report and the JSON file.
"""
