"""Orgs, listed contacts and staff are defined in the config; the database mirrors them
(synced on start) so tickets can reference them. Nothing is deleted: an org or staff
member removed from the config is marked inactive, keeping history intact."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Contact, Org, Staff
from postdesk.workflow.rules.config import Config


def sync_from_config(session: Session, config: Config) -> None:
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


def org_by_slug(session: Session, slug: str) -> Org | None:
    return session.scalar(select(Org).where(Org.slug == slug))


def staff_by_email(session: Session, email: str) -> Staff | None:
    return session.scalar(select(Staff).where(Staff.email == email.lower()))


def contact_for(session: Session, email: str, org: Org, name: str = "") -> Contact:
    """The contact row for an address, created on first contact for domain members."""
    row = session.scalar(select(Contact).where(Contact.email == email))
    if row is None:
        row = Contact(email=email, org_id=org.id, name=name)
        session.add(row)
        session.flush()
    return row
