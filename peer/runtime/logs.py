"""Log output for the ``peer`` command: readable lines, or JSON lines.

Library code only calls ``logging``; this module, used by the CLI, decides
how records look. Fields passed with ``extra=`` (``node``, ``event``,
``member``...) appear in JSON output as keys of their own, so a machine can
read ``{"ts": ..., "event": "failed", "member": "p3"}`` without parsing the
message.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else came in through extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(nodeprefix)s%(message)s", "%Y-%m-%d %H:%M:%S")
        self.converter = time.localtime

    def format(self, record: logging.LogRecord) -> str:
        node = getattr(record, "node", None)
        record.nodeprefix = f"[{node}] " if node else ""
        return super().format(record)


def configure(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_http_libraries()


def quiet_http_libraries() -> None:
    """The HTTP server's and clients' own chatter (hypercorn; httpx logs a
    line per request at info) is for debugging them, not the node: warnings
    and up only, or less if the root logger says so."""
    level = max(logging.WARNING, logging.getLogger().level)
    for name in ("hypercorn", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(level)
