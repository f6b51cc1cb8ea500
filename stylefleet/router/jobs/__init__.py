"""Server-side batch jobs: accepted by any router replica, run through ``RouterCore.handle`` (the
same validation, A/B choice, deployment handles, batching and metrics as online requests), and
kept in a ``Storage`` (a local folder or any fsspec URI) so that they survive restarts.

One replica runs a job at a time, holding its lease and renewing it; a job whose lease expired
(its replica died) or was released (the replica shut down) is resumed by whichever replica scans
it next: items with a result are never run again, the others are. At most
``max_in_flight_per_job`` items of a job are in flight, so online traffic keeps the rest of each
deployment's queue; the variant is chosen once per job, so a whole job has one look.

The parts, each owning one thing:

- ``store``: the layout of a job under the storage root, its spec, every read and write of it;
- ``lease``: which replica runs a job (``lease.json``: taken, renewed, released);
- ``runner``: running the items, with the one retry policy (``stylefleet.retry``);
- ``events``: progress as server-sent events;
- ``result``: the result zip;
- ``manager``: ``JobManager``, which creates, schedules, describes and cancels jobs with the above.

Import the modules themselves (``stylefleet.router.jobs.manager.JobManager``): this package's ``__init__``
imports none of them, or each would import itself through it (a cycle tests/unit/test_imports.py
fails on)."""
