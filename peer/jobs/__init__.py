"""The jobs domain, sans-IO: what a job is and who runs which tick.

cron schedules (``cron``), job definitions (``definition``), targets
(``targets``), run records and their transitions (``runs``), what counts as a
duplicate execution (``executions``), placement on the ring (``ring``),
leases (``leases``), and the scheduler (``scheduler``, the one face, and its
parts: ``local``, ``view``, ``records``, ``ticks``, ``placement``,
``claims``). Nothing here reads a clock, touches a socket or a thread, or
draws global randomness: time and a ``random.Random`` come in as arguments.
Imports only ``crdt``, ``membership`` and itself.
"""
