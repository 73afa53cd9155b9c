"""Writing ORM rows now, each in one Core statement on the session's connection, and
leaving the session as a flush would: the rows persistent, their values committed.

The record phase of one email writes a handful of rows it knows in full (a ticket, its
message, its drafts, its SLA clocks). A flush of the unit of work costs about ten times
the statement it emits (dependency sorting, per-flush bookkeeping, history of every
attribute); these helpers emit the same statement without it. Anything else pending in
the session stays pending and is flushed as usual."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Insert, Table, Update, bindparam, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from postdesk.storage.db import ON_CONFLICT_DIALECTS, insert_unless_exists

_Row = TypeVar("_Row")
_INSERTS: dict[tuple[type, str, str | None], tuple[Insert, str]] = {}


def insert_now(session: Session, row: _Row, *, unless_exists: str | None = None) -> bool:
    """Write ``row`` now, in one INSERT, and attach it to the session as the persistent
    row it is. Columns left unset take their database defaults, and are loaded if read.

    ``unless_exists``: the name of a unique column; when a row with the same value is
    there already (or being written by a concurrent transaction, which is waited for)
    nothing is written and False is returned: one statement where a look-up and an
    insert would take two."""
    state = sa_inspect(row)
    cls = state.mapper.class_
    connection = session.connection()
    dialect = connection.dialect.name
    if unless_exists is not None and dialect not in ON_CONFLICT_DIALECTS:
        column = getattr(cls, unless_exists)
        if session.scalar(select(column).where(
                column == getattr(row, unless_exists)).limit(1)) is not None:
            return False
        unless_exists = None
    statement, pk_key = _insert_of(cls, dialect if unless_exists else "", unless_exists)
    written = connection.execute(statement, _values(row, pk_key)).first()
    if written is None:
        return False
    _attach(session, row, pk_key, written[0])
    return True


def insert_all_now(session: Session, rows: Sequence[Any]) -> None:
    """Write ``rows`` (of one mapped class, the same columns set in each) now, with
    SQLAlchemy's "insertmanyvalues" (ids returned in the rows' order: one INSERT of
    several VALUES on PostgreSQL, one INSERT per row on SQLite, as a flush would), and
    attach them to the session as persistent rows."""
    if not rows:
        return
    cls = sa_inspect(rows[0]).mapper.class_
    _, pk_key = _insert_of(cls, "", None)
    values = [_values(row, pk_key) for row in rows]
    if len(rows) == 1 or any(v.keys() != values[0].keys() for v in values):
        for row in rows:
            insert_now(session, row)
        return
    ids = session.connection().execute(_insert_many_of(cls), values).scalars().all()
    for row, row_id in zip(rows, ids, strict=True):
        _attach(session, row, pk_key, row_id)


def update_now(session: Session, row: Any, **values: Any) -> None:
    """Set ``values`` on the persistent ``row`` and write them now, in one UPDATE by its
    primary key: the values are the row's committed state (no history, nothing left for
    a flush to write). Attributes changed on the row before are left to the flush."""
    state = sa_inspect(row)
    identity = state.identity
    assert identity is not None, "update_now needs a persistent row"
    session.connection().execute(_update_of(state.mapper.class_, tuple(values)),
                                 {"_row_id": identity[0], **values})
    for key, value in values.items():
        set_committed_value(row, key, value)


_UPDATES: dict[tuple[type, tuple[str, ...]], Update] = {}


def _update_of(cls: type, keys: tuple[str, ...]) -> Update:
    """``UPDATE table SET key = :key, ... WHERE pk = :_row_id``, built once per class and
    set of keys: building and caching a statement costs more than running it."""
    if (cls, keys) not in _UPDATES:
        mapper: Mapper[Any] = sa_inspect(cls)
        [pk] = mapper.primary_key
        _UPDATES[cls, keys] = update(cast(Table, mapper.local_table)).where(
            pk == bindparam("_row_id")).values(
            {mapper.get_property(key).columns[0].key: bindparam(key) for key in keys})
    return _UPDATES[cls, keys]


def _insert_of(cls: type, dialect: str, unless_exists: str | None) -> tuple[Insert, str]:
    key = (cls, dialect, unless_exists)
    if key not in _INSERTS:
        mapper: Mapper[Any] = sa_inspect(cls)
        [pk] = mapper.primary_key
        statement = (insert(cls) if unless_exists is None
                     else cast(Insert, insert_unless_exists(dialect, cls, unless_exists)))
        _INSERTS[key] = (statement.returning(pk), mapper.get_property_by_column(pk).key)
    return _INSERTS[key]


_INSERT_MANY: dict[type, Insert] = {}


def _insert_many_of(cls: type) -> Insert:
    if cls not in _INSERT_MANY:
        mapper: Mapper[Any] = sa_inspect(cls)
        [pk] = mapper.primary_key
        _INSERT_MANY[cls] = insert(cls).returning(pk, sort_by_parameter_order=True)
    return _INSERT_MANY[cls]


_COLUMN_KEYS: dict[type, tuple[str, ...]] = {}


def _values(row: Any, pk_key: str) -> dict[str, Any]:
    """The row's column values that are set (the primary key left to the database)."""
    cls = type(row)
    keys = _COLUMN_KEYS.get(cls)
    if keys is None:
        keys = _COLUMN_KEYS[cls] = tuple(
            attr.key for attr in sa_inspect(cls).column_attrs if attr.key != pk_key)
    values = sa_inspect(row).dict
    return {key: values[key] for key in keys if key in values}


def _attach(session: Session, row: Any, pk_key: str, row_id: Any) -> None:
    setattr(row, pk_key, row_id)
    make_transient_to_detached(row)
    session.add(row)
