"""A local AWS for the ``aws`` backend: moto's server, made to behave like DynamoDB.

::

    python -m backend_stub.localaws --port 5000   # prints: listening on http://127.0.0.1:5000

Plain ``moto_server`` cannot carry a migration of any size (measured with the README's
former recipe: 3,000 items took 582 s, a transaction failed with ``RuntimeError:
dictionary changed size during iteration`` and the server grew past 20 GB). Two causes,
both in moto's DynamoDB:

* Requests run on concurrent threads with no lock, while DynamoDB applies each write
  (and each transaction) atomically: two conditional writes of one item could both pass
  their condition, and one request iterates a table another one is changing.
* ``transact_write_items`` deep-copies the whole table once per item of the transaction,
  to undo a cancelled one: 100 copies of a table of N items per transaction, so time and
  memory grow with N squared (and with every thread copying at once).
* A query on the table's key lists and sorts every item of the table to keep those of
  one partition: reading a session page by page costs N log N per page.

This launcher runs moto's server with every request but SQS's serialized (moto's queues
hold their own lock, and a worker's long poll must not hold the others up), undoes a
cancelled transaction from a log of the items it touches instead of table copies, and
lets a table query look at its own partition only; and an S3 part sent to an upload that
was completed meanwhile is answered ``NoSuchUpload`` as S3 does (moto answers a 500).
The test suite's moto fixture runs the same server (``tests/aws_fixtures.py``).

moto is a development dependency (the ``localaws`` dependency group, part of ``test``);
nothing else imports this.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import functools
import importlib
import inspect
import logging
import signal
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

__all__ = ["local_aws", "main", "patches", "serialized"]

#: The (object, attribute, value) of each moto patch; the launcher sets them for good,
#: tests through ``pytest.MonkeyPatch`` (undone at the end of the session).
Patch = tuple[object, str, Any]

# The module swap below is seen by every thread: one transaction at a time.
_swap = threading.Lock()


def patches() -> list[Patch]:
    """moto's transactions, undone from a log of the items they touch (see the module).

    >>> [name for _, name, _ in patches()]
    ['transact_write_items', 'query', 'upload_part']
    """
    models = _dynamodb_models()
    backend, table = models.DynamoDBBackend, models.Table
    s3 = importlib.import_module("moto.s3.models").S3Backend
    return [
        (backend, "transact_write_items", _logged(backend.transact_write_items)),
        (table, "query", _one_partition(table.query)),
        (s3, "upload_part", _known_upload(s3.upload_part)),
    ]


def _known_upload(original: Callable[..., Any]) -> Callable[..., Any]:
    """``S3Backend.upload_part`` answering ``NoSuchUpload``, as S3 does, for an upload that
    was completed or aborted meanwhile (moto fails with a ``KeyError``: a 500)."""
    exceptions = importlib.import_module("moto.s3.exceptions")

    @functools.wraps(original)
    def upload_part(self: Any, bucket_name: str, multipart_id: str, *args: Any) -> Any:
        if multipart_id not in self.get_bucket(bucket_name).multiparts:
            raise exceptions.NoSuchUpload(multipart_id)
        return original(self, bucket_name, multipart_id, *args)

    return upload_part


def _one_partition(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Table.query`` reading only the queried partition when it reads the table itself
    (not an index): moto keeps items as ``items[hash][range]`` already. With a string
    sort key, the partition comes sorted and starts after ``ExclusiveStartKey``, so that
    reading a partition page by page costs its size once per page, not a sort."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        call = signature.bind(self, hash_key, *args, **kwargs).arguments
        if call.get("index_name") or hash_key is None or not self.range_key_attr:
            return original(self, hash_key, *args, **kwargs)
        partition = list(self.items.get(hash_key, {}).values())
        if self.range_key_type == "S":
            partition.sort(key=lambda item: item.range_key.value)
            start = (call.get("exclusive_start_key") or {}).get(self.range_key_attr, {})
            if "S" in start and call.get("scan_index_forward", True):
                after = bisect.bisect_right(
                    partition, start["S"], key=lambda item: item.range_key.value
                )
                partition = partition[after:]
        # An instance attribute shadows the method for this call only (requests on
        # DynamoDB are serialized, see ``serialized``).
        self.all_items = lambda: partition
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    return query


def _dynamodb_models() -> Any:
    # As Any: the patches reach into what moto does not export (its ``copy`` module).
    return importlib.import_module("moto.dynamodb.models")


def _logged(original: Callable[..., Any]) -> Callable[..., Any]:
    models = _dynamodb_models()

    def no_table_copies(value: Any, memo: Any = None) -> Any:
        # moto "backs up" each table by deep-copying it; the undo log makes that needless.
        return value if isinstance(value, models.Table) else copy.deepcopy(value, memo)

    without_copies = types.SimpleNamespace(deepcopy=no_table_copies, copy=copy.copy)

    @functools.wraps(original)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        undo = list(_before(self, transact_items))
        with _swap:
            models.copy = without_copies
            try:
                return original(self, transact_items)
            except BaseException:
                for table, hash_value, range_value, item in reversed(undo):
                    _put_back(table, hash_value, range_value, item)
                raise
            finally:
                models.copy = copy

    return transact_write_items


def _before(backend: Any, transact_items: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """(table, hash, range, a copy of the item or None) for each item written."""
    for entry in transact_items:
        try:
            op_type, op = next(iter(entry.items()))
            table = backend.tables[op["TableName"]]
            keys = op["Item"] if op_type == "Put" else op["Key"]
            hash_value, range_value = backend.get_keys_value(table, keys)
            current = table.get_item(hash_value, range_value)
        except Exception:
            continue  # moto rejects this entry before it writes anything
        yield table, hash_value, range_value, copy.deepcopy(current)


def _put_back(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if item is None:
        table.delete_item(hash_value, range_value)
    elif table.range_key_attr is not None:
        table.items[hash_value][range_value] = item
    else:
        table.items[hash_value] = item


def _service(environ: dict[str, Any]) -> str:
    """The AWS service a signed request is for (its SigV4 credential scope), or ``""``."""
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    scope = auth.split("Credential=", 1)[-1].split(",", 1)[0].split("/")
    return scope[3] if len(scope) == 5 else ""


def serialized(app: Callable[..., Any]) -> Callable[..., Any]:
    """The WSGI ``app`` answering one request at a time, except SQS's (see the module).

    >>> def hello(environ, start_response):
    ...     start_response("200 OK", [])
    ...     return iter([b"hi"])
    >>> serialized(hello)({}, lambda *args: None)
    [b'hi']
    """
    lock = threading.Lock()

    def one_at_a_time(environ: dict[str, Any], start_response: Any) -> Any:
        if _service(environ) == "sqs":
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    return one_at_a_time


def _server_class() -> type[Any]:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class _LocalAws(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = serialized(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return _LocalAws


def local_aws(host: str = "127.0.0.1", port: int = 0) -> Any:
    """moto's threaded server on ``host:port``, serialized (``.start()``, ``.stop()``,
    ``.get_host_and_port()``); apply :func:`patches` first.

    >>> server = local_aws(port=0)
    >>> server.start()
    >>> server.get_host_and_port()[0]
    '127.0.0.1'
    >>> server.stop()
    """
    return _server_class()(ip_address=host, port=port, verbose=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; print ``listening on http://HOST:PORT`` once ready.
    Its arguments are the command line's (``--help`` lists them); a bad one exits 2:

    >>> main(["--port", "not-a-number"])
    Traceback (most recent call last):
    SystemExit: 2
    """
    parser = argparse.ArgumentParser(prog="python -m backend_stub.localaws")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000, help="0: any free port")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for target, name, value in patches():
        setattr(target, name, value)
    server = local_aws(args.host, args.port)
    server.start()
    host, port = server.get_host_and_port()
    print(f"listening on http://{host}:{port}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
