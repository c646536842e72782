"""Test tooling, apart from the library as ``trio.testing`` is from trio:
agents on loopback (``cluster``), process and port helpers (``processes``),
sample job functions (``samples``). Used by the tests, the benchmarks and
the tools; imports the control plane and below.
"""
