"""Many rows into one table, a multi-row ``INSERT`` at a time instead of a statement a row.

``executemany`` runs its statement once per row, and costs about 1 us a row in sqlite3's
Python loop around SQLite (binding, stepping and resetting for each); one ``INSERT ...
VALUES (...), (...), ...`` of a hundred rows binds them in one C loop and steps once.
`bench/throughput.py`'s staged insert went from 2.4 to 1.5 us a row so. Rows go
:data:`MAX_PARAMETERS` parameters to a statement at most: the limit of every SQLite
before 3.32, which phones may still bundle::

    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE t (a, b)")
    >>> insert_rows(conn, "INSERT INTO t (a, b) VALUES", 2, ((i, -i) for i in range(1000)))
    1000
    >>> conn.execute("SELECT count(*), sum(a), sum(b) FROM t").fetchone()
    (1000, 499500, -499500)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

__all__ = ["MAX_PARAMETERS", "insert_columns", "insert_rows"]

#: SQLITE_MAX_VARIABLE_NUMBER before SQLite 3.32 (32766 since).
MAX_PARAMETERS = 999


def insert_rows(
    conn: sqlite3.Connection, head: str, width: int, rows: Iterable[Sequence[Any]]
) -> int:
    """Run ``head`` (``INSERT INTO t (columns) VALUES``) for every row of ``width``
    values, as few statements as the parameter limit allows; returns the rows inserted.
    A row of another width is a ``ValueError`` before anything is written. As with
    ``executemany`` in a transaction, a failing row (``IntegrityError``) leaves the rows
    of earlier statements written: the caller's transaction decides.

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE t (a PRIMARY KEY)")
    >>> insert_rows(conn, "INSERT INTO t (a) VALUES", 1, [(1,), (2, 3)])
    Traceback (most recent call last):
    ...
    ValueError: every row must hold 1 values
    """
    rows = rows if isinstance(rows, list) else list(rows)
    if set(map(len, rows)) - {width}:
        raise ValueError(f"every row must hold {width} values")
    return _insert_flat(conn, head, width, list(chain.from_iterable(rows)))


def insert_columns(conn: sqlite3.Connection, head: str, columns: Sequence[Sequence[Any]]) -> int:
    """:func:`insert_rows` of rows given as columns of equal length (the first column's
    first value, the second's, ... make the first row), with no tuple made per row: the
    columns are interleaved into the statements' parameters by slice assignment, in C.
    Columns of unequal lengths are a ``ValueError`` before anything is written.

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE t (a, b)")
    >>> insert_columns(conn, "INSERT INTO t (a, b) VALUES", [[1, 2], ["x", "y"]])
    2
    >>> conn.execute("SELECT a, b FROM t ORDER BY a").fetchall()
    [(1, 'x'), (2, 'y')]
    >>> insert_columns(conn, "INSERT INTO t (a, b) VALUES", [[1, 2], ["x"]])
    Traceback (most recent call last):
    ...
    ValueError: every column must hold 2 values
    """
    width, count = len(columns), len(columns[0])
    if set(map(len, columns)) - {count}:
        raise ValueError(f"every column must hold {count} values")
    flat: list[Any] = [None] * (count * width)
    for offset, column in enumerate(columns):
        flat[offset::width] = column
    return _insert_flat(conn, head, width, flat)


def _insert_flat(conn: sqlite3.Connection, head: str, width: int, flat: list[Any]) -> int:
    """The statements of :func:`insert_rows` over its rows' values laid end to end."""
    count = len(flat) // width
    per = max(1, MAX_PARAMETERS // width)  # rows in a full statement
    group = "(" + ",".join("?" * width) + ")"
    full = f"{head} {','.join([group] * per)}"
    step = per * width
    whole = count - count % per
    for start in range(0, whole * width, step):
        conn.execute(full, flat[start : start + step])
    if count > whole:
        conn.execute(f"{head} {','.join([group] * (count - whole))}", flat[whole * width :])
    return count
