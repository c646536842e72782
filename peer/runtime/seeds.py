"""Seeds: where a node looks for its cluster.

A seed is written one of two ways:

- ``HOST:PORT`` (``10.0.0.5:7946``, ``[fd00::5]:7946``, ``node-a.internal:7946``):
  one address; a hostname takes all its A/AAAA records.
- ``dns:NAME[:PORT]``: every A/AAAA record of NAME, at PORT (default 7946).
  This is the Kubernetes headless-service pattern (libcluster's
  ``Kubernetes.DNS`` strategy): the service name resolves to the ready pods,
  so pods find each other with no fixed list.

Names are resolved again every ``dns_interval`` seconds, so a node that
started alone (the first pod) finds the others as they appear. A hosts file
(``/etc/hosts`` format) can be given to answer for names before DNS does; it
is read again on every resolution.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio

from membership.state import Address
from peer.runtime.addresses import AddressError, is_ip, normalize_ip, split_host_port

DEFAULT_SEED_PORT = 7946
DNS_PREFIX = "dns:"

log = logging.getLogger("peer.seeds")

# name -> IP literals; raises OSError (socket.gaierror) when the name is unknown.
Lookup = Callable[[str], Awaitable[list[str]]]


@attrs.frozen
class Seed:
    host: str
    port: int
    dns: bool  # written dns:NAME: every record, an empty answer is fine

    def __str__(self) -> str:
        return f"{DNS_PREFIX}{self.host}:{self.port}" if self.dns else f"{self.host}:{self.port}"


def parse_seed(text: str) -> Seed:
    """Parse one seed; ``ValueError`` says what is wrong with it."""
    dns = text.startswith(DNS_PREFIX)
    body = text[len(DNS_PREFIX) :] if dns else text
    try:
        host, port = split_host_port(body, default_port=DEFAULT_SEED_PORT if dns else None)
    except AddressError as error:
        raise ValueError(f"seed {text!r}: {error}") from None
    if port == 0:
        raise ValueError(f"seed {text!r}: port 0 cannot be contacted")
    if dns and is_ip(host):
        raise ValueError(f"seed {text!r}: dns: takes a name; write an IP address as HOST:PORT")
    return Seed(host, port, dns)


def read_hosts_file(path: str) -> dict[str, list[str]]:
    """``/etc/hosts`` format: ``IP NAME [ALIAS...]``, ``#`` comments. A line
    that does not start with an IP is skipped."""
    names: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or not is_ip(fields[0]):
                continue
            for name in fields[1:]:
                names.setdefault(name.lower(), []).append(normalize_ip(fields[0]))
    return names


async def system_lookup(name: str) -> list[str]:
    infos = await trio.socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    return [normalize_ip(str(info[4][0])) for info in infos]


class SeedResolver:
    """Turns seeds into addresses, consulting the hosts file first."""

    def __init__(self, seeds: Iterable[Seed], *, hosts_file: str | None = None, lookup: Lookup = system_lookup):
        self.seeds = tuple(seeds)
        self.hosts_file = hosts_file
        self._lookup = lookup
        self.failures = 0  # names that did not resolve, over all resolutions

    async def resolve(self) -> list[Address]:
        """Every seed's current addresses, in seed order, without repeats. A
        name that does not resolve is logged and skipped: the other seeds may
        be enough, and the name is tried again next time."""
        hosts = self._read_hosts()
        addresses: dict[Address, None] = {}
        for seed in self.seeds:
            if is_ip(seed.host):
                addresses[(normalize_ip(seed.host), seed.port)] = None
                continue
            ips = hosts.get(seed.host.lower())
            if ips is None:
                try:
                    ips = await self._lookup(seed.host)
                except OSError as error:
                    self.failures += 1
                    level = logging.DEBUG if seed.dns else logging.WARNING
                    log.log(level, "seed %s does not resolve: %s", seed, error)
                    continue
            for ip in ips:
                addresses[(ip, seed.port)] = None
        return list(addresses)

    def _read_hosts(self) -> dict[str, list[str]]:
        if self.hosts_file is None:
            return {}
        try:
            return read_hosts_file(self.hosts_file)
        except OSError as error:
            log.warning("cannot read hosts file %s: %s", self.hosts_file, error.strerror)
            return {}
