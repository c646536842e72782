"""The control plane: the ways a program or a person drives a node.

In process (``node``: the embedding ``peer.Node``), over HTTP (``api``: the
server, ``client``: the Python client), from a terminal (``cli``, with
``text`` for what it prints); ``errors``: the exceptions the node and the
client both raise. I/O: HTTP and the terminal. Imports ``peer.runtime`` and below.
"""
