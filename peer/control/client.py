"""Talking to a running agent's control API (what ``peer members`` and the
other client commands use): one request, a JSON answer, or a ``ClientError``
whose message says what to check."""

from __future__ import annotations

import functools
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from membership.state import Address
from peer.runtime.addresses import format_address


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
    api: Address, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0
) -> dict[str, Any]:
    """The JSON document at ``path``; ``body``, when not None, is sent as JSON."""
    answer = fetch(api, path, method=method, body=body, timeout=timeout)
    try:
        document: dict[str, Any] = json.loads(answer)
    except ValueError as error:
        raise ClientError(f"{path}: the answer is not JSON: {error}") from None
    return document


def fetch(api: Address, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> bytes:
    """The body at ``path``; ``body``, when not None, is sent as JSON.
    Redirects are followed for GET only (the API sends none)."""
    url = f"http://{format_address(api)}{path}"
    headers = {}
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        with httpx.Client(verify=_no_tls(), timeout=timeout, follow_redirects=method == "GET") as client:
            response = client.request(method, url, content=data, headers=headers)
    except httpx.TimeoutException:
        raise ClientError(f"the agent at {format_address(api)} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as error:
        reason = _root_cause(error)
        if isinstance(reason, ConnectionRefusedError):
            raise ClientError(
                f"no agent answers at {format_address(api)} (connection refused): is `peer agent` running, "
                "and is --api (or PEER_API) its API address?"
            ) from None
        raise ClientError(f"cannot reach the agent at {format_address(api)}: {reason}") from None
    if not 200 <= response.status_code < 300:
        try:
            detail = response.json().get("error", response.reason_phrase)
        except (ValueError, AttributeError):
            detail = response.reason_phrase
        raise ClientError(f"{url}: HTTP {response.status_code}: {detail}", status=response.status_code)
    return response.content


@functools.cache
def _no_tls() -> ssl.SSLContext:
    """A context that trusts no certificate: the API is plain HTTP, so it
    is never used, and httpx's default would load a CA bundle (~20 ms) for
    every client."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _root_cause(error: BaseException) -> BaseException:
    """The error httpx wrapped (a ``ConnectionRefusedError``...)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return error
