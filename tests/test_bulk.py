"""``insert_rows`` and ``insert_columns``: what ``executemany`` writes, a multi-row statement
at a time."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk._store.bulk import MAX_PARAMETERS, insert_columns, insert_rows

VALUES = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(), st.binary())


def table(width: int) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    columns = ", ".join(f"c{i}" for i in range(width))
    conn.execute(f"CREATE TABLE t (n INTEGER PRIMARY KEY, {columns})")
    return conn


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 12),
    count=st.integers(0, 700),
    value=VALUES,
)
def test_the_rows_written_are_those_executemany_writes_in_order(width, count, value):
    rows = [(n, *([value] * (width - 1))) for n in range(count)]
    ours, theirs = table(width), table(width)
    columns = ", ".join(f"c{i}" for i in range(width))
    assert insert_rows(ours, f"INSERT INTO t ({columns}) VALUES", width, iter(rows)) == count
    theirs.executemany(f"INSERT INTO t ({columns}) VALUES ({', '.join('?' * width)})", rows)
    dump = "SELECT * FROM t ORDER BY n"
    assert ours.execute(dump).fetchall() == theirs.execute(dump).fetchall()


def test_no_statement_binds_more_than_the_oldest_sqlite_allows():
    conn = table(8)
    bound: list[int] = []
    conn.set_trace_callback(lambda sql: bound.append(sql.count("(")))
    insert_rows(conn, "INSERT INTO t (c0, c1, c2, c3, c4, c5, c6, c7) VALUES", 8, [(0,) * 8] * 300)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (300,)
    groups = [n - 1 for n in bound if n > 1]  # the column list's parenthesis is not a row
    assert sum(groups) == 300 and max(groups) * 8 <= MAX_PARAMETERS and len(groups) == 3


def test_a_row_of_another_width_writes_nothing_and_a_duplicate_key_raises():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a PRIMARY KEY, b)")
    with pytest.raises(ValueError, match="every row must hold 2 values"):
        insert_rows(conn, "INSERT INTO t (a, b) VALUES", 2, [(1, 2), (3,), (4, 5)])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "INSERT INTO t (a, b) VALUES", 2, [(1, 2), (1, 3)])


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 12), count=st.integers(1, 700), value=VALUES)
def test_columns_write_the_rows_their_transpose_writes(width, count, value):
    rows = [(n, *([value] * (width - 1))) for n in range(count)]
    ours, theirs = table(width), table(width)
    columns = ", ".join(f"c{i}" for i in range(width))
    head = f"INSERT INTO t ({columns}) VALUES"
    by_column = [list(column) for column in zip(*rows, strict=True)]
    assert insert_columns(ours, head, by_column) == count
    insert_rows(theirs, head, width, rows)
    dump = "SELECT * FROM t ORDER BY n"
    assert ours.execute(dump).fetchall() == theirs.execute(dump).fetchall()


def test_columns_of_unequal_lengths_write_nothing():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a PRIMARY KEY, b)")
    with pytest.raises(ValueError, match="every column must hold 3 values"):
        insert_columns(conn, "INSERT INTO t (a, b) VALUES", [[1, 2, 3], [4, 5]])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
