"""A map's hash summary: a shallow Merkle tree over its keys.

Each key lands in a leaf by the leading bits of its hash; the tree has
``DEPTH`` levels below the root, each node with ``FANOUT`` children
(16 x 16 x 16 x 16 = 65,536 leaves). A node's hash is the XOR of the hashes
of the entries under it, and its count how many there are, both kept up to
date on every change (``DEPTH`` updates per entry change), so comparing two
replicas starts at once from the root's children.

Two replicas compare children, descend only into those that differ, and
exchange entries once a differing node is small; traffic follows the
difference, not the state (``peer.core.replication`` runs the exchange). Nodes
are named ``(level, index)``: level 0 is the root, level ``DEPTH`` the leaves.
Hashes are 64-bit BLAKE2b: a collision between two different entry sets in
the same node would hide a difference, with odds of 2**-64 per comparison.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS
DEPTH = 4
HASH_BITS = 64

Node = tuple[int, int]  # (level, index)
ROOT: Node = (0, 0)


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def key_position(key: str) -> int:
    """Where a key sits in every tree: the same on every replica."""
    return hash64(b"k" + key.encode())


def node_of(position: int, level: int) -> int:
    return position >> (HASH_BITS - FANOUT_BITS * level)


def children(node: Node) -> list[Node]:
    level, index = node
    if level >= DEPTH:
        return []
    first = index << FANOUT_BITS
    return [(level + 1, first + offset) for offset in range(FANOUT)]


class Scope:
    """A set of digest nodes; ``position in scope`` in at most DEPTH + 1 lookups."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = frozenset(nodes)
        self._levels = sorted({level for level, _ in self.nodes})

    def __contains__(self, position: int) -> bool:
        nodes = self.nodes
        return any((level, position >> (HASH_BITS - FANOUT_BITS * level)) in nodes for level in self._levels)


class HashTree:
    """Per-node XOR of entry hashes and entry counts, sparse: an empty node
    costs nothing."""

    def __init__(self) -> None:
        # Per level, node index -> [hash, count]: one lookup per level on update.
        self._nodes: list[dict[int, list[int]]] = [{} for _ in range(DEPTH + 1)]
        # Keys by leaf, as dicts: insertion-ordered, so every replica lists a
        # node's keys in an order that does not depend on string hashing.
        self._leaves: dict[int, dict[str, None]] = {}

    def update(self, key: str, position: int, old: int | None, new: int | None) -> None:
        """Entry ``key`` changed its hash from ``old`` to ``new`` (None:
        absent)."""
        if old == new:
            return
        delta = (old or 0) ^ (new or 0)
        count = (new is not None) - (old is not None)
        shift = HASH_BITS
        for nodes in self._nodes:
            index = position >> shift
            shift -= FANOUT_BITS
            node = nodes.get(index)
            if node is None:
                nodes[index] = [delta, count]
            else:
                node[0] ^= delta
                node[1] += count
                if not node[1]:
                    del nodes[index]
        leaf = position >> (HASH_BITS - FANOUT_BITS * DEPTH)
        if new is None:
            keys = self._leaves[leaf]
            keys.pop(key, None)
            if not keys:
                del self._leaves[leaf]
        elif old is None:
            self._leaves.setdefault(leaf, {})[key] = None

    def summary(self, node: Node) -> tuple[int, int]:
        """(hash, count) of a node."""
        level, index = node
        found = self._nodes[level].get(index)
        return (found[0], found[1]) if found is not None else (0, 0)

    def children_summary(self, node: Node) -> list[tuple[int, int]]:
        return [self.summary(child) for child in children(node)]

    def keys_under(self, node: Node) -> Iterator[str]:
        level, index = node
        if level == DEPTH:
            yield from self._leaves.get(index, ())
            return
        shift = FANOUT_BITS * (DEPTH - level)
        if index not in self._nodes[level]:
            return
        span = 1 << shift
        first = index << shift
        if len(self._leaves) < span:
            for leaf, keys in self._leaves.items():
                if leaf >> shift == index:
                    yield from keys
        else:
            for leaf in range(first, first + span):
                yield from self._leaves.get(leaf, ())
