"""Tools built on everything below: the demo (``peer demo``) and the
real-process chaos harness (``python -m peer.tools.chaos``). May do anything.
"""
