"""Writing ORM rows now, each in one Core statement on the session's connection, and
leaving the session as a flush would: the rows persistent, their values committed.

The record phase of one email writes a handful of rows it knows in full (a ticket, its
message, its drafts, its SLA clocks). A flush of the unit of work costs about ten times
the statement it emits (dependency sorting, per-flush bookkeeping, history of every
attribute); these helpers emit the same statement without it. Anything else pending in
the session stays pending and is flushed as usual. Statements are built once per class
(and shape): building and caching one costs more than running it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Column, Insert, Table, Update, bindparam, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from postdesk.storage.db import ON_CONFLICT_DIALECTS, insert_unless_exists

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
