"""Structured logs and CloudWatch metrics: one JSON object per log line.

:class:`JsonFormatter` writes each record as a JSON object (time, level, logger, message,
and the fields passed in ``extra``). :func:`metric` logs a record that is also a
CloudWatch *Embedded Metric Format* document: on Lambda (or with the CloudWatch agent) the
log line becomes metrics, with no API call and no extra latency. Metrics are per
migration: the session and user ids are properties of each document (searchable in Logs
Insights), not dimensions (which would make a metric per migration)::

    >>> doc = metric_document("BatchProcessed", {"Items": 3}, {"sessionId": "s1"}, now_ms=0)
    >>> doc["_aws"]["CloudWatchMetrics"][0]["Metrics"], doc["Items"], doc["sessionId"]
    ([{'Name': 'Items', 'Unit': 'Count'}], 3, 's1')
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["NAMESPACE", "JsonFormatter", "configure_logging", "metric", "metric_document"]

#: The CloudWatch namespace of every metric.
NAMESPACE = "OfflineMigrate"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_UNITS = {"Ms": "Milliseconds", "Bytes": "Bytes"}


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON; ``extra`` fields become top-level keys.

    >>> record = logging.makeLogRecord({"msg": "batch %d stored", "args": (3,),
    ...                                 "levelname": "INFO", "name": "w", "created": 0,
    ...                                 "sessionId": "s1"})
    >>> json.loads(JsonFormatter().format(record))["message"]
    'batch 3 stored'
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if (name not in _STANDARD and not name.startswith("_")) or name == "_aws":
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, separators=(",", ":"))


def configure_logging(*, json_lines: bool = True, stream: TextIO | None = None) -> None:
    """Log INFO and above to ``stream`` (stderr), as JSON lines or as plain text.

    Replaces the root logger's handlers, so call it once, from a program's entry point.

    >>> configure_logging(json_lines=False, stream=sys.stdout)
    >>> logging.getLogger().handlers[0].formatter.__class__.__name__
    'Formatter'
    >>> logging.getLogger().handlers.clear()
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def metric_document(
    name: str,
    values: Mapping[str, float],
    properties: Mapping[str, Any],
    *,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """An EMF document: ``values`` become metrics of namespace :data:`NAMESPACE`, with the
    one dimension ``Event=name``. A value named ``...Ms`` is in milliseconds, ``...Bytes``
    in bytes, anything else a count.

    >>> metric_document("BatchProcessed", {"ProcessingMs": 12.5}, {}, now_ms=0)["_aws"]
    {'Timestamp': 0, 'CloudWatchMetrics': [{'Namespace': 'OfflineMigrate', \
'Dimensions': [['Event']], 'Metrics': [{'Name': 'ProcessingMs', 'Unit': 'Milliseconds'}]}]}
    """
    metrics = [
        {"Name": key, "Unit": next((u for s, u in _UNITS.items() if key.endswith(s)), "Count")}
        for key in values
    ]
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if now_ms is None else now_ms,
            "CloudWatchMetrics": [
                {"Namespace": NAMESPACE, "Dimensions": [["Event"]], "Metrics": metrics}
            ],
        },
        "Event": name,
        **properties,
        **values,
    }


def metric(
    logger: logging.Logger,
    name: str,
    values: Mapping[str, float],
    message: str = "",
    **properties: Any,
) -> None:
    """Log ``message`` at INFO as an EMF document (see :func:`metric_document`).

    >>> metric(logging.getLogger("doc"), "MigrationCompleted", {"Items": 10}, sessionId="s1")
    """
    document = metric_document(name, values, properties)
    logger.info(message or name, extra=document)
