"""The trio runtime: the node core on real sockets, clocks and threads.

``agent`` (the driver: ``Agent``), ``executor`` (running targets),
``transport`` (UDP and TCP sockets), ``wire`` (the codec: the only reader of
untrusted bytes), ``keys``, ``seeds``, ``settings``, ``addresses``, ``logs``.
May do I/O and read the clock. Imports ``peer.core`` and below, never the
control plane: the agent serves whatever control plane it is given.
"""
