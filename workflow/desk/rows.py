"""Writing ORM rows now, each in one Core statement on the session's connection, and
leaving the session as a flush would: the rows persistent, their values committed.

The record phase of one email writes a handful of rows it knows in full (a ticket, its
message, its drafts, its SLA clocks). A flush of the unit of work costs about ten times
the statement it emits (dependency sorting, per-flush bookkeeping, history of every
attribute); these helpers emit the same statement without it. Anything else pending in
the session stays pending and is flushed as usual. Statements are built once per class
(and shape): building and caching one costs more than running it.

Inside ``buffered_rows`` (an import's batch on SQLite) the same helpers hold the rows
instead, with ids this block hands out, and write them with one ``executemany`` per table
and shape: before any other statement runs on the connection (so whatever reads, updates
or refers to them finds them there) and when the block ends. A statement that needs none
of them says so (``NEEDS_NO_BUFFERED_ROWS``) and runs with them still held; the few reads
that every email of a batch makes (is this email stored already, how many tickets this
sender opened this hour) are answered from the database plus ``buffered_values``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Column,
    Connection,
    Insert,
    Table,
    Update,
    bindparam,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from postdesk.storage.db import (
    NEEDS_NO_BUFFERED_ROWS,
    NO_BUFFERED_ROWS_NEEDED,
    ON_CONFLICT_DIALECTS,
    insert_unless_exists,
)
from postdesk.storage.models import Base

_Row = TypeVar("_Row")


@dataclass(frozen=True)
class _Shape:
    """What the helpers need of a mapped class, read from its mapper once."""

    table: Table
    pk: Column[Any]
    pk_key: str                 # the primary key's attribute
    keys: tuple[str, ...]       # the other column attributes


_SHAPES: dict[type, _Shape] = {}
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        mapper: Mapper[Any] = sa_inspect(cls)
        [pk] = mapper.primary_key
        pk_key = mapper.get_property_by_column(pk).key
        shape = _SHAPES[cls] = _Shape(
            cast(Table, mapper.local_table), cast(Column[Any], pk), pk_key,
            tuple(a.key for a in mapper.column_attrs if a.key != pk_key))
    return shape


def insert_now(session: Session, row: _Row, *, unless_exists: str | None = None) -> bool:
    """Write ``row`` now, in one INSERT, and attach it to the session as the persistent
    row it is. Columns left unset take their database defaults, and are loaded if read.

    ``unless_exists``: the name of a unique column; when a row with the same value is
    there already (or being written by a concurrent transaction, which is waited for)
    nothing is written and False is returned: one statement where a look-up and an
    insert would take two."""
    shape = _shape(type(row))
    row_id = insert_values_now(session, type(row), _values(row, shape),
                               unless_exists=unless_exists)
    if row_id is None:
        return False
    _attach(session, row, shape, row_id)
    return True


def insert_values_now(session: Session, cls: type, values: dict[str, Any], *,
                      unless_exists: str | None = None) -> Any | None:
    """Write one row of ``cls`` from its attributes' ``values`` now, in one INSERT, and
    return its primary key: for a row no one needs as an object of the session (building
    and attaching one is most of what writing it costs). None when ``unless_exists`` (as
    for ``insert_now``) found the row there already."""
    shape = _shape(cls)
    buffer: _Buffer | None = session.info.get(_BUFFER)
    if buffer is not None:
        return buffer.add(cls, shape, values, unless_exists)
    connection = session.connection()
    dialect = connection.dialect.name
    if unless_exists is not None and dialect not in ON_CONFLICT_DIALECTS:
        column = getattr(cls, unless_exists)
        if session.scalar(select(column).where(
                column == values[unless_exists]).limit(1)) is not None:
            return None
        unless_exists = None
    key = ("insert", cls, dialect if unless_exists else "", unless_exists)
    if key not in _STATEMENTS:
        statement = (insert(cls) if unless_exists is None
                     else cast(Insert, insert_unless_exists(dialect, cls, unless_exists)))
        _STATEMENTS[key] = statement.returning(shape.pk)
    written = connection.execute(_STATEMENTS[key], values).first()
    return None if written is None else written[0]


def insert_all_now(session: Session, rows: Sequence[Any]) -> None:
    """Write ``rows`` (of one mapped class, the same columns set in each) now, with
    SQLAlchemy's "insertmanyvalues" (ids returned in the rows' order: one INSERT of
    several VALUES on PostgreSQL, one INSERT per row on SQLite, as a flush would), and
    attach them to the session as persistent rows."""
    if not rows:
        return
    cls = type(rows[0])
    shape = _shape(cls)
    buffer: _Buffer | None = session.info.get(_BUFFER)
    if buffer is not None:
        for row in rows:
            _attach(session, row, shape, buffer.add(cls, shape, _values(row, shape)))
        return
    key = ("insert_all", cls)
    if key not in _STATEMENTS:
        _STATEMENTS[key] = insert(cls).returning(shape.pk, sort_by_parameter_order=True)
    ids = session.connection().execute(
        _STATEMENTS[key], [_values(row, shape) for row in rows]).scalars().all()
    for row, row_id in zip(rows, ids, strict=True):
        _attach(session, row, shape, row_id)


def update_now(session: Session, row: Any, **values: Any) -> None:
    """Set ``values`` on the persistent ``row`` and write them now, in one UPDATE by its
    primary key: the values are the row's committed state (no history, nothing left for
    a flush to write). Attributes changed on the row before are left to the flush."""
    identity = sa_inspect(row).identity
    assert identity is not None, "update_now needs a persistent row"
    cls, names = type(row), tuple(values)
    key = ("update", cls, names)
    if key not in _STATEMENTS:
        shape = _shape(cls)
        _STATEMENTS[key] = update(shape.table).where(shape.pk == bindparam("_row_id")).values(
            {getattr(cls, name).expression.key: bindparam(name) for name in names})
    statement: Update = _STATEMENTS[key]
    session.connection().execute(statement, {"_row_id": identity[0], **values})
    for name, value in values.items():
        set_committed_value(row, name, value)


def _values(row: Any, shape: _Shape) -> dict[str, Any]:
    """The row's column values that are set (the primary key left to the database)."""
    values = sa_inspect(row).dict
    return {key: values[key] for key in shape.keys if key in values}


def _attach(session: Session, row: Any, shape: _Shape, row_id: Any) -> None:
    setattr(row, shape.pk_key, row_id)
    make_transient_to_detached(row)
    session.add(row)


# --- rows held until the next statement ---------------------------------------------------

# session.info key: the ``_Buffer`` of the ``buffered_rows`` block open on the session.
_BUFFER = "postdesk_buffered_rows"
# Tables in the order their rows are written: a row's foreign keys name rows written
# before it (SQLite checks each statement's references when it runs).
_TABLE_ORDER = {table: index for index, table in enumerate(Base.metadata.sorted_tables)}


class _Buffer:
    """Rows written into a ``buffered_rows`` block and not yet in the database, grouped
    by table and set of columns (one ``executemany`` each), with the ids handed out."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.groups: dict[tuple[type, tuple[str, ...]], list[dict[str, Any]]] = {}
        self.next_ids: dict[Table, int] = {}
        # The unique values (``unless_exists``) given in the block, written or not.
        self.unique: dict[tuple[type, str], set[Any]] = {}

    def add(self, cls: type, shape: _Shape, values: dict[str, Any],
            unless_exists: str | None = None) -> Any | None:
        """Hold one row; its id. ``unless_exists``: as for ``insert_values_now``, against
        the rows held (a row already in the database under the same key fails the unique
        key when the rows are written: the batch is recorded again, statement by
        statement)."""
        if unless_exists is not None:
            given = self.unique.setdefault((cls, unless_exists), set())
            if values[unless_exists] in given:
                return None
            given.add(values[unless_exists])
        row = {**values, shape.pk_key: self._next_id(shape)}
        self.groups.setdefault((cls, tuple(row)), []).append(row)
        return row[shape.pk_key]

    def held(self, cls: type) -> list[dict[str, Any]]:
        """The rows of ``cls`` held, not yet written."""
        return [row for (held_cls, _columns), rows in self.groups.items() if held_cls is cls
                for row in rows]

    def _next_id(self, shape: _Shape) -> int:
        """The next id of the table: above every id it holds and (AUTOINCREMENT) every id it
        ever handed out. Safe only while no one else can write the table: the caller holds
        SQLite's write lock (``BEGIN IMMEDIATE``)."""
        table = shape.table
        next_id = self.next_ids.get(table)
        if next_id is None:
            top = self.connection.execute(
                select(func.max(shape.pk)).execution_options(**NO_BUFFERED_ROWS_NEEDED)
            ).scalar() or 0
            if table.dialect_options["sqlite"]["autoincrement"]:
                top = max(top, self.connection.exec_driver_sql(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,),
                    execution_options=NO_BUFFERED_ROWS_NEEDED).scalar() or 0)
            next_id = top + 1
        self.next_ids[table] = next_id + 1
        return next_id

    def write(self) -> None:
        """Write every row held: one ``executemany`` per table and set of columns, parent
        tables first."""
        if not self.groups:
            return
        groups = sorted(self.groups.items(),
                        key=lambda item: _TABLE_ORDER[_shape(item[0][0]).table])
        self.groups = {}
        for (cls, _columns), rows in groups:
            key = ("insert_buffered", cls)
            if key not in _STATEMENTS:
                _STATEMENTS[key] = insert(cls).execution_options(**NO_BUFFERED_ROWS_NEEDED)
            self.connection.execute(_STATEMENTS[key], rows)


@contextmanager
def buffered_rows(session: Session) -> Iterator[None]:
    """Hold the rows written with this module's helpers through the block, and write them
    together (see the module's docstring). Only on SQLite, whose ``BEGIN IMMEDIATE`` lets
    the block hand out ids; elsewhere each row is written at once, as outside. A block
    that ends by an exception writes nothing (its transaction is being rolled back)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite" or _BUFFER in session.info:
        yield
        return
    buffer = _Buffer(connection)

    def before_execute(_conn: Any, statement: Any, _multi: Any, _params: Any,
                       options: Any) -> None:
        if not options.get(NEEDS_NO_BUFFERED_ROWS, False):
            buffer.write()
            if not any(getattr(statement, kind, False)
                       for kind in ("is_select", "is_update", "is_delete")):
                # It may add rows itself (the ORM flushing a clock it added): the next id
                # of each table is read again before one is handed out.
                buffer.next_ids.clear()

    session.info[_BUFFER] = buffer
    event.listen(connection, "before_execute", before_execute)
    try:
        yield
        buffer.write()
    finally:
        event.remove(connection, "before_execute", before_execute)
        session.info.pop(_BUFFER, None)


def write_buffered_rows(session: Session) -> None:
    """Write the rows a ``buffered_rows`` block holds now (before its transaction commits,
    so that one that cannot be written is found while the batch can still be redone)."""
    buffer: _Buffer | None = session.info.get(_BUFFER)
    if buffer is not None:
        buffer.write()


def buffered_values(session: Session, cls: type) -> Sequence[dict[str, Any]]:
    """The column values (by attribute) of the rows of ``cls`` a ``buffered_rows`` block
    holds, not yet in the database; none outside such a block."""
    buffer: _Buffer | None = session.info.get(_BUFFER)
    return () if buffer is None else buffer.held(cls)
