"""Talking to a running agent's control API (what ``peer members`` and the
other client commands use): one request, a JSON answer, or a ``ClientError``
whose message says what to check.

Where and how to reach the agent is an ``Endpoint``: its address, HTTPS or
not (and the CA file that verifies its certificate), and the bearer token
to send. A bare address is plain HTTP with no token, as on loopback."""

from __future__ import annotations

import functools
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from membership.state import Address
from peer.runtime.addresses import format_address


@attrs.frozen
class Endpoint:
    """An agent's control API: ``address``; ``tls`` for HTTPS, verified
    against ``ca_file`` (else the system's CAs); ``token`` sent as
    ``Authorization: Bearer``."""

    address: Address
    tls: bool = False
    token: str | None = attrs.field(default=None, repr=False)
    ca_file: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{format_address(self.address)}"


def split_scheme(text: str) -> tuple[bool | None, str]:
    """``https://HOST:PORT`` -> ``(True, "HOST:PORT")``; ``http://`` -> False;
    no scheme -> None (as configured). A trailing ``/`` is dropped."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if text.lower().startswith(scheme):
            return tls, text[len(scheme) :].rstrip("/")
    return None, text


class ClientError(Exception):
    """The request failed; ``status`` is the HTTP status when the agent
    answered with an error (404 for an unknown job or run...), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def quote(segment: str) -> str:
    """One path segment, percent-encoded: run ids hold ``@`` and ``:``."""
    return urllib.parse.quote(segment, safe="")


def api_path(*segments: str, query: Mapping[str, Any] | None = None) -> str:
    """``/a/b?k=v`` from its segments (each quoted) and query (None values left out)."""
    text = "/" + "/".join(quote(segment) for segment in segments)
    given = {key: value for key, value in (query or {}).items() if value is not None}
    return f"{text}?{urllib.parse.urlencode(given)}" if given else text


def call(
    api: Address | Endpoint, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0
) -> dict[str, Any]:
    """The JSON document at ``path``; ``body``, when not None, is sent as JSON."""
    answer = fetch(api, path, method=method, body=body, timeout=timeout)
    try:
        document: dict[str, Any] = json.loads(answer)
    except ValueError as error:
        raise ClientError(f"{path}: the answer is not JSON: {error}") from None
    return document


def fetch(api: Address | Endpoint, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> bytes:
    """The body at ``path``; ``body``, when not None, is sent as JSON.
    Redirects are followed for GET only (the API sends none)."""
    endpoint = api if isinstance(api, Endpoint) else Endpoint(api)
    where = format_address(endpoint.address)
    url = endpoint.url + path
    headers = {}
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if endpoint.token is not None:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    try:
        verify = _tls(endpoint.ca_file) if endpoint.tls else _no_tls()
    except (OSError, ssl.SSLError) as error:
        raise ClientError(f"cannot use {endpoint.ca_file} as the API's CA (--api-ca, PEER_API_CA): {error}") from None
    try:
        with httpx.Client(verify=verify, timeout=timeout, follow_redirects=method == "GET") as client:
            response = client.request(method, url, content=data, headers=headers)
    except httpx.TimeoutException:
        raise ClientError(f"the agent at {where} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as error:
        reason = _root_cause(error)
        if isinstance(reason, ConnectionRefusedError):
            raise ClientError(
                f"no agent answers at {where} (connection refused): is `peer agent` running, "
                "and is --api (or PEER_API) its API address?"
            ) from None
        if isinstance(reason, ssl.SSLError):
            raise ClientError(
                f"TLS with the agent at {where} failed: {reason} (is its API HTTPS, and is its certificate's CA "
                "given with --api-ca or PEER_API_CA?)"
            ) from None
        raise ClientError(f"cannot reach the agent at {where}: {reason}") from None
    if not 200 <= response.status_code < 300:
        try:
            detail = response.json().get("error", response.reason_phrase)
        except (ValueError, AttributeError):
            detail = response.reason_phrase
        if response.status_code == 401 and endpoint.token is None:
            detail += " (no token was sent: give --api-token-file FILE, PEER_API_TOKEN or PEER_API_TOKEN_FILE)"
        raise ClientError(f"{url}: HTTP {response.status_code}: {detail}", status=response.status_code)
    return response.content


@functools.cache
def _tls(ca_file: str | None) -> ssl.SSLContext:
    """A context verifying the agent's certificate: against ``ca_file``, or the system's CAs."""
    return ssl.create_default_context(cafile=ca_file)


@functools.cache
def _no_tls() -> ssl.SSLContext:
    """A context that trusts no certificate: for plain HTTP it is never
    used, and httpx's default would load a CA bundle (~20 ms) for every
    client."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _root_cause(error: BaseException) -> BaseException:
    """The error httpx wrapped (a ``ConnectionRefusedError``...)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return error
