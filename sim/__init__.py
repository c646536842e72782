"""Deterministic discrete-event simulator driving peer's protocol cores.

``python -m sim membership --nodes N --seed S ... --json`` runs a scenario;
``sim.membership_scenario`` is the programmatic interface.
"""
