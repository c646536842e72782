"""Talking to a running agent's control API (what ``peer members`` and the
other client commands use): one request, a JSON answer, or a ``ClientError``
whose message says what to check."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from membership.state import Address
from peer.addresses import format_address


class ClientError(Exception):
    pass


def call(api: Address, path: str, *, method: str = "GET", timeout: float = 5.0) -> dict[str, Any]:
    """The JSON document at ``path``."""
    body = fetch(api, path, method=method, timeout=timeout)
    try:
        document: dict[str, Any] = json.loads(body)
    except ValueError as error:
        raise ClientError(f"{path}: the answer is not JSON: {error}") from None
    return document


def fetch(api: Address, path: str, *, method: str = "GET", timeout: float = 5.0) -> bytes:
    """The body at ``path``."""
    url = f"http://{format_address(api)}{path}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as error:
        try:
            detail = json.load(error).get("error", error.reason)
        except ValueError:
            detail = error.reason
        raise ClientError(f"{url}: HTTP {error.code}: {detail}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, ConnectionRefusedError):
            raise ClientError(
                f"no agent answers at {format_address(api)} (connection refused): is `peer agent` running, "
                "and is --api (or PEER_API) its API address?"
            ) from None
        raise ClientError(f"cannot reach the agent at {format_address(api)}: {reason}") from None
    except TimeoutError:
        raise ClientError(f"the agent at {format_address(api)} did not answer within {timeout:g}s") from None
