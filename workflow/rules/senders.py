"""Who sent this email, by the rules of the config (pure: config in, identity out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from postdesk.workflow.rules.config import Config

SenderKind = Literal["staff", "contact", "unknown"]


@dataclass(frozen=True)
class SenderIdentity:
    kind: SenderKind
    email: str
    org_slug: str | None = None
    listed_contact: bool = False      # named in the org's contacts (not just its domain)
    can_approve: bool = False
    staff_role: str | None = None
    name: str = ""


def identify_sender(address: str | None, config: Config) -> SenderIdentity:
    """Staff first (a staff member is never treated as a client), then contacts listed
    by name, then org domains, then a catch-all org (``domains = ["*"]``)."""
    email = (address or "").strip().lower()
    if not email or "@" not in email:
        return SenderIdentity(kind="unknown", email=email)
    staff = config.staff_member(email)
    if staff:
        return SenderIdentity(kind="staff", email=email, staff_role=staff.role, name=staff.name)
    for org in config.orgs:
        for contact in org.contacts:
            if contact.email == email:
                return SenderIdentity(kind="contact", email=email, org_slug=org.slug,
                                      listed_contact=True, can_approve=contact.can_approve,
                                      name=contact.name)
    domain = email.rsplit("@", 1)[1]
    for org in config.orgs:
        if domain in org.domains:
            return SenderIdentity(kind="contact", email=email, org_slug=org.slug)
    for org in config.orgs:
        if "*" in org.domains:
            return SenderIdentity(kind="contact", email=email, org_slug=org.slug)
    return SenderIdentity(kind="unknown", email=email)
