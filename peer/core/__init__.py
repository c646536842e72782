"""The node core, sans-IO: membership, replication and the scheduler behind
one face (``NodeCore``: ``receive``, ``tick``, ``next_deadline``,
``take_effects``), driven alike by the trio runtime and the simulator.
No clock, no I/O, no global randomness. Imports ``peer.jobs`` and below.
"""
