"""The floors' server: a bare ASGI app that inserts each JSON batch in one SQLite
transaction (no auth, no validation, no checksums, no sessions). Also `POST /item`
for the one-request-per-item baseline.

`POST /batch` parses with the stdlib's json (the project's first floor); `POST /honest`
parses with orjson and writes into a table keyed like backend_stub's ``cloud_items``
(user, collection, key): the honest floor, the cheapest server that stores the same rows.

    python bench/floor_server.py DATA_DIR   # prints "listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson
import uvicorn

Scope = dict[str, Any]


def make_app(db_path: Path) -> Any:
    conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS items (collection TEXT, key TEXT, data TEXT,"
        " updated_at INTEGER, deleted INTEGER, PRIMARY KEY (collection, key)) WITHOUT ROWID"
    )

    conn.execute(
        "CREATE TABLE IF NOT EXISTS cloud (user_id TEXT, collection TEXT, key TEXT, data TEXT,"
        " updated_at INTEGER, deleted INTEGER, PRIMARY KEY (user_id, collection, key))"
        " WITHOUT ROWID"
    )

    def insert_honest(items: list[dict[str, Any]]) -> None:
        dumps = orjson.dumps
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO cloud VALUES ('bench', ?, ?, ?, ?, ?)",
            [
                (i["collection"], i["key"], dumps(i["data"]).decode(), i["updatedAt"], i["deleted"])
                for i in items
            ],
        )
        conn.execute("COMMIT")

    def insert(items: list[dict[str, Any]]) -> None:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)",
            (
                (i["collection"], i["key"], json.dumps(i["data"]), i["updatedAt"], i["deleted"])
                for i in items
            ),
        )
        conn.execute("COMMIT")

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/honest":
            insert_honest(orjson.loads(b"".join(chunks))["items"])
        else:
            body = json.loads(b"".join(chunks))
            insert(body["items"] if scope["path"] == "/batch" else [body])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    return app


def main() -> None:
    data_dir = Path(sys.argv[1])
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as backend_stub does
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(make_app(data_dir / "floor.sqlite3"), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
