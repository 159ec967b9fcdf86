"""Conveyor's benchmarks: ``make bench`` or ``python -m bench --help``.

Never part of ``make test``: the figures depend on the machine and are read by people
(docs/benchmarks.md), not asserted. Every benchmark takes a :class:`bench.stores.StoreConfig`
and asks it for a fresh database URL per run, so a store is added in one place
(:mod:`bench.stores`) and every benchmark runs against it.

Modules:

- :mod:`bench.enqueue`: bulk enqueue with ``Client.enqueue_many``;
- :mod:`bench.throughput`: one worker draining no-op jobs, in-process and as a real
  ``conveyor worker --burst`` subprocess;
- :mod:`bench.latency`: enqueue → handler start on an idle worker, same process and across
  processes;
- :mod:`bench.memory`: RSS of an idle ``conveyor worker``;
- :mod:`bench.kinds`: the job kinds they run (``--import bench.kinds`` in subprocesses);
- :mod:`bench.report`: rows, targets, the printed report and the JSON file.
"""
