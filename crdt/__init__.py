"""Delta-state CRDTs: hybrid logical clocks, OR-maps of LWW registers with
expiry, digest anti-entropy. Pure: never imports ``peer`` or ``sim``.

Not built yet: see the crdt issue.
"""
