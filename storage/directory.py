"""Orgs, listed contacts and staff are defined in the config; the database mirrors them
(synced on start) so tickets can reference them. Nothing is deleted: an org or staff
member removed from the config is marked inactive, keeping history intact."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Collection
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, bindparam, event, inspect, select
from sqlalchemy.orm import Session, make_transient_to_detached

from postdesk.storage.db import NO_BUFFERED_ROWS_NEEDED, ON_CONFLICT_DIALECTS, insert_unless_exists
from postdesk.storage.models import Contact, Org, Staff
from postdesk.workflow.rules.config import Config


def sync_from_config(session: Session, config: Config) -> None:
    # The cached org/staff rows are stale from here on, and again once this commits
    # (another thread may have cached the old rows in between).
    forget_cached_rows()
    event.listen(session, "after_commit", _forget_after_commit, once=True)
    orgs = {o.slug: o for o in session.scalars(select(Org))}
    for org_cfg in config.orgs:
        org = orgs.get(org_cfg.slug)
        if org is None:
            org = Org(slug=org_cfg.slug, name=org_cfg.name, plan=org_cfg.plan)
            session.add(org)
            orgs[org.slug] = org
        org.name, org.plan, org.active = org_cfg.name, org_cfg.plan, True
    wanted = {o.slug for o in config.orgs}
    for slug, org in orgs.items():
        if slug not in wanted:
            org.active = False
    session.flush()

    contacts = {c.email: c for c in session.scalars(select(Contact))}
    for org_cfg in config.orgs:
        for c in org_cfg.contacts:
            row = contacts.get(c.email)
            if row is None:
                row = Contact(email=c.email, org_id=orgs[org_cfg.slug].id)
                session.add(row)
            row.org_id = orgs[org_cfg.slug].id
            row.name, row.can_approve, row.listed = c.name, c.can_approve, True

    staff = {s.email: s for s in session.scalars(select(Staff))}
    for s in config.staff:
        member = staff.get(s.email)
        if member is None:
            member = Staff(email=s.email)
            session.add(member)
        member.name, member.role, member.active = s.name, s.role, True
    listed = {s.email for s in config.staff}
    for email, member in staff.items():
        if email not in listed:
            member.active = False


# --- look-ups -----------------------------------------------------------------------------
# Org and staff rows change only in ``sync_from_config``, from this process's own config:
# they are cached per process (and per database: one per engine), as detached copies that
# each session takes with ``merge(load=False)`` — no SQL, and a session's changes to its
# copy never reach the cache. ``sync_from_config`` empties the cache.

_T = TypeVar("_T", Org, Staff)


class _Rows:
    def __init__(self) -> None:
        self.by_key: dict[tuple[type, str, object], Any] = {}


_CACHES: weakref.WeakKeyDictionary[Engine, _Rows] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _rows(session: Session) -> _Rows | None:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    if not isinstance(engine, Engine):
        return None
    with _CACHES_LOCK:
        rows = _CACHES.get(engine)
        if rows is None:
            rows = _CACHES[engine] = _Rows()
    return rows


def forget_cached_rows() -> None:
    """Empty the org/staff cache (every database): the directory was just re-synced."""
    with _CACHES_LOCK:
        _CACHES.clear()


def _forget_after_commit(session: Session) -> None:
    forget_cached_rows()


# session.info key: the cached rows merged into the session, held for its life.
_HELD = "postdesk_directory_rows"


def _detached_copy(row: _T) -> _T:
    mapper = inspect(type(row))
    copy = type(row)(**{c.key: getattr(row, c.key) for c in mapper.column_attrs})
    make_transient_to_detached(copy)
    return copy


def _cached(session: Session, model: type[_T], column: str, value: object) -> _T | None:
    rows = _rows(session)
    key = (model, column, value)
    hit = rows.by_key.get(key) if rows is not None else None
    if hit is not None:
        present = session.identity_map.get(inspect(hit).key)
        if present is not None:
            return cast(_T, present)
        # merge(load=False): into this session as it was cached, without a query. The
        # session holds its rows weakly: keep this one for the session's life, or a
        # session that records many emails (an import's batch) merges it again for each.
        merged = session.merge(hit, load=False)
        session.info.setdefault(_HELD, []).append(merged)
        return cast(_T, merged)
    with session.no_autoflush:
        row = session.scalar(select(model).where(getattr(model, column) == value))
    if row is not None and rows is not None and not session.is_modified(row):
        copy = _detached_copy(row)
        rows.by_key[key] = copy
        rows.by_key[(model, "id", row.id)] = copy
    return row


def org_by_slug(session: Session, slug: str) -> Org | None:
    return _cached(session, Org, "slug", slug)


def org_by_id(session: Session, org_id: int) -> Org | None:
    return _cached(session, Org, "id", org_id)


def staff_by_email(session: Session, email: str) -> Staff | None:
    return _cached(session, Staff, "email", email.lower())


def staff_by_id(session: Session, staff_id: int) -> Staff | None:
    return _cached(session, Staff, "id", staff_id)


_ENSURE_CONTACT = {dialect: insert_unless_exists(dialect, Contact, "email")
                   for dialect in ON_CONFLICT_DIALECTS}
# Contacts are never among the rows an import's batch holds back, and refer to none:
# their statements run with NO_BUFFERED_ROWS_NEEDED.


# session.info key: (the transaction, the addresses whose contact it has ensured).
_ENSURED = "postdesk_ensured_contacts"


def ensure_contact(session: Session, email: str, org: Org, name: str = "") -> None:
    """The contact row for an address exists: created on first contact for domain
    members, in one statement on the session's connection (``INSERT ... ON CONFLICT DO
    NOTHING``: a concurrent first email from the same address neither fails nor
    duplicates it). Nothing pending in the session is flushed.

    Once per address and transaction: an import's batch records many emails from each
    sender in one. An address ensured inside a savepoint is not remembered (rolling the
    savepoint back would undo it)."""
    values = {"email": email, "org_id": org.id, "name": name, "can_approve": False,
              "listed": False, "hard_bounces": 0}
    ensured = _ensured_in_this_transaction(session)
    if ensured is not None and email in ensured:
        return
    connection = session.connection()
    statement = _ENSURE_CONTACT.get(connection.dialect.name)
    if statement is not None:
        connection.execute(statement, values, execution_options=NO_BUFFERED_ROWS_NEEDED)
    else:
        with session.no_autoflush:
            found = session.scalar(select(Contact.id).where(Contact.email == email))
        if found is None:
            session.add(Contact(**values))
    if ensured is not None:
        ensured.add(email)


_EXISTING_CONTACTS = select(Contact.email).where(
    Contact.email.in_(bindparam("emails", expanding=True)))


def known_contacts(session: Session, emails: Collection[str]) -> None:
    """Look these addresses' contact rows up in one statement, so that ``ensure_contact``
    writes nothing for those that exist, for the rest of the transaction (an import's
    batch, whose senders its helper parsed ahead: most have written before)."""
    ensured = _ensured_in_this_transaction(session)
    if ensured is None or not emails:
        return
    ensured.update(session.connection().execute(
        _EXISTING_CONTACTS, {"emails": sorted(set(emails) - ensured)},
        execution_options=NO_BUFFERED_ROWS_NEEDED).scalars())


def _ensured_in_this_transaction(session: Session) -> set[str] | None:
    """The addresses ``ensure_contact`` has ensured in the session's transaction; None
    inside a savepoint (or outside a transaction), where nothing is remembered."""
    transaction = session.get_transaction()
    if transaction is None or session.in_nested_transaction():
        return None
    ensured: set[str]
    ensured_in, ensured = session.info.get(_ENSURED, (None, set()))
    if ensured_in is not transaction:
        ensured = set()
        session.info[_ENSURED] = (transaction, ensured)
    return ensured
