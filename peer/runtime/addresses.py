"""Network addresses as people write them: ``host:port`` and ``[v6]:port``.

Inside the node an address is ``(host, port)`` with ``host`` an IP literal
(``membership.state.Address``); hostnames are resolved at the edge (seeds,
``peer.runtime.seeds``) and never reach the protocol core.
"""

from __future__ import annotations

import ipaddress

from membership.state import Address


class AddressError(ValueError):
    """A ``host:port`` that cannot be used, with the reason."""


def split_host_port(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"10.0.0.1:7946"``, ``"[::1]:7946"``, ``"db.example:7946"`` -> (host, port).
    Without a port, ``default_port`` is used if given, else it is an error."""
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise AddressError(f"{text!r}: missing ']' after an IPv6 address")
        if rest and not rest.startswith(":"):
            raise AddressError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        raise AddressError(f"{text!r}: write an IPv6 address in brackets, as [{text}]:PORT")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise AddressError(f"{text!r}: missing host")
    if not port_text:
        if default_port is None:
            raise AddressError(f"{text!r}: missing ':PORT'")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def parse_ip_address(text: str, *, default_port: int | None = None) -> Address:
    """A ``host:port`` whose host must be an IP literal (bind, advertise, api)."""
    host, port = split_host_port(text, default_port=default_port)
    if not is_ip(host):
        raise AddressError(f"{text!r}: {host!r} is not an IP address")
    return normalize_ip(host), port


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalize_ip(host: str) -> str:
    """One spelling per address, so the core compares addresses by value."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def is_ipv6(host: str) -> bool:
    return ":" in host


def is_wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if is_ipv6(host) else f"{host}:{port}"
