"""The trust decision: what one inbound email may do. Decided once, before anything acts.

Pure: evidence in, verdict out. No I/O, no database, no clock. The pipeline gathers the
evidence (who From names by the config, the SMTP envelope sender, which tickets the
email's references point at, the DKIM result) and then opens, changes or relays only
what the verdict allows.

The rules, in the order they are applied:

=====  ==================================  ============================================
 #     when                                verdict
=====  ==================================  ============================================
 1     released by an operator             client content on a ticket of the release org
                                           (or one the sender is on), else a new ticket
                                           for that org; never staff authority, DKIM not
                                           checked again. No org to file it under:
                                           quarantine ``unknown_sender``.
 2     From is a staff address,            **staff_reply** on the token's ticket, if the
       with a staff-only token             envelope sender is exactly the From address
                                           and (``staff_require_dkim``) DKIM passed;
                                           else quarantine ``unauthenticated``.
 3     staff, no staff token,              **staff_action** ``on_behalf`` if the envelope
       #org / #requester                   is exact, DKIM passed (or was not checked and
                                           ``staff_unverified_on_behalf`` is on, and
                                           ``staff_require_dkim`` is off); else
                                           quarantine ``unauthenticated``.
 4     staff, no staff token,              **staff_action** ``read_only`` if the envelope
       a read-only request (queue)         is exact and DKIM passed where required; else
                                           quarantine ``unauthenticated``.
 5     staff, only client-visible          quarantine ``unauthenticated``: an
       tokens (ack Message-ID, [PD-n])     acknowledgement's Message-ID or a ``[PD-n]``
                                           subject never carries staff authority.
 6     staff, nothing else                 quarantine ``no_ticket`` if it looks genuine
                                           (rule 2's checks), else ``unauthenticated``.
 7     contact of an org that              quarantine ``unauthenticated`` unless DKIM
       requires DKIM                       passed (``None``, not checked, fails closed).
 8     contact                             client content on the first referenced ticket
                                           of the sender's own org or that lists the
                                           sender as a participant (requester, cc added
                                           by staff); other references are ignored, as if
                                           absent: a new ticket for the sender's org.
                                           Staff tokens and ``#`` lines give a client
                                           nothing.
 9     anyone else                         quarantine ``unknown_sender``.
=====  ==================================  ============================================

A quarantine of mail whose From is a staff address (rules 2-6) names that configured
address in ``Verdict.notify_staff``: the real staff member is told, never the envelope.

``TRUST_TABLE`` lists concrete cases (kind of sender x token x checks -> verdict); the
security documentation's table is rendered from it by ``trust_table_markdown()`` and a
test walks every row against ``decide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from postdesk.workflow.rules.senders import SenderIdentity

__all__ = [
    "TRUST_TABLE",
    "DkimCase",
    "EnvelopeCase",
    "Evidence",
    "QuarantineReason",
    "RefHow",
    "SenderCase",
    "Setting",
    "StaffActionKind",
    "TicketRef",
    "TokenCase",
    "TrustRow",
    "Verdict",
    "VerdictKind",
    "decide",
    "exact_envelope",
    "trust_table_markdown",
]

RefHow = Literal["staff_token", "our_message_id", "client_message_id", "subject",
                 "reply_address"]
VerdictKind = Literal["client_content", "new_ticket", "staff_reply", "staff_action",
                      "quarantine"]
QuarantineReason = Literal["unauthenticated", "no_ticket", "unknown_sender"]
StaffActionKind = Literal["on_behalf", "read_only"]


@dataclass(frozen=True)
class TicketRef:
    """A ticket that one of the email's client-visible references points at."""

    ticket_id: int
    org_slug: str
    participants: frozenset[str]   # requester + cc added by staff (not "everyone who wrote")
    how: RefHow


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """Everything the decision may look at. Every field that could widen what an email
    may do is required, so a caller cannot forget one and get the permissive default."""

    sender: SenderIdentity            # identify_sender(From, config)
    envelope_from: str                # SMTP MAIL FROM / Return-Path; "" for the null sender
    staff_token_ticket: int | None    # ticket named by a staff-only token (signed staff
    #                                   reply address, or a signed staff-purpose Message-ID
    #                                   the email answers); None if none
    client_refs: tuple[TicketRef, ...]  # client-visible references, most trusted first
    dkim: bool | None                 # aligned DKIM/DMARC pass; None = not checked/available
    staff_require_dkim: bool          # config: desk.staff_require_dkim
    org_require_dkim: bool            # the sender's org has require_dkim
    staff_unverified_on_behalf: bool  # config switch, default off
    released: bool                    # an operator released it from quarantine
    released_to_org: str | None       # the org chosen on release (None: sender's own org)
    asks_on_behalf: bool              # names #org / #requester to open a ticket for a client
    asks_read_only: bool = False      # a read-only request (queue / mine / all)


@dataclass(frozen=True)
class Verdict:
    """What the email may do. ``client_content`` and ``new_ticket`` mean: handle the
    sender as a contact of ``org_slug`` whatever From says; never run ``#`` commands."""

    kind: VerdictKind
    ticket_id: int | None = None          # client_content, staff_reply
    org_slug: str | None = None           # client_content (the ticket's org), new_ticket
    matched_by: RefHow | None = None      # client_content: which reference found it
    action: StaffActionKind | None = None   # staff_action
    reason: QuarantineReason | None = None  # quarantine
    detail: str = ""                      # why, for the quarantine list and the logs
    notify_staff: str | None = None       # quarantine of staff mail: tell this address

    @property
    def staff_authority(self) -> bool:
        """May run commands / relay as staff / open a ticket on a client's behalf."""
        return self.kind in ("staff_reply", "staff_action")

    @property
    def summary(self) -> str:
        return f"quarantine: {self.reason}" if self.kind == "quarantine" else self.kind


# --- the decision -------------------------------------------------------------------------

def _address(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


def exact_envelope(sender_email: str, envelope_from: str) -> bool:
    """The envelope sender is the From address itself: case-insensitive, the whole
    address (not its domain), never the null sender."""
    envelope = _address(envelope_from)
    return bool(envelope) and envelope == _address(sender_email)


def _quarantine(reason: QuarantineReason, detail: str, notify: str | None = None) -> Verdict:
    return Verdict("quarantine", reason=reason, detail=detail, notify_staff=notify)


def _as_client(evidence: Evidence, org_slug: str) -> Verdict:
    """Client content on the first admissible reference, else a new ticket. A reference
    is admissible when its ticket is of ``org_slug`` or lists the sender."""
    email = _address(evidence.sender.email)
    for ref in evidence.client_refs:
        on_ticket = email in {_address(p) for p in ref.participants}
        if ref.org_slug == org_slug or on_ticket:
            return Verdict("client_content", ticket_id=ref.ticket_id, org_slug=ref.org_slug,
                           matched_by=ref.how)
    return Verdict("new_ticket", org_slug=org_slug)


def _released(evidence: Evidence) -> Verdict:
    sender = evidence.sender
    org = evidence.released_to_org or (sender.org_slug if sender.kind == "contact" else None)
    if org is None:
        return _quarantine("unknown_sender", "released without an org, and the sender "
                           "belongs to none: release it with an org")
    return _as_client(evidence, org)


def _staff(evidence: Evidence) -> Verdict:
    sender = evidence.sender
    tell = sender.email
    envelope_ok = exact_envelope(sender.email, evidence.envelope_from)
    dkim_ok = evidence.dkim is True or not evidence.staff_require_dkim
    problems = []
    if not envelope_ok:
        shown = _address(evidence.envelope_from) or "the null sender"
        problems.append(f"envelope sender {shown} is not {sender.email}")
    if not dkim_ok:
        problems.append("no aligned DKIM pass (staff_require_dkim is on)")
    genuine = not problems
    why = "; ".join(problems)

    if evidence.staff_token_ticket is not None:
        if genuine:
            return Verdict("staff_reply", ticket_id=evidence.staff_token_ticket)
        return _quarantine("unauthenticated", f"staff reply not trusted: {why}", tell)
    if evidence.asks_on_behalf:
        if not genuine:
            return _quarantine("unauthenticated", f"ticket on behalf refused: {why}", tell)
        if evidence.dkim is True or (evidence.dkim is None
                                     and evidence.staff_unverified_on_behalf):
            return Verdict("staff_action", action="on_behalf")
        return _quarantine("unauthenticated", "ticket on behalf refused: a staff email "
                           "without a ticket token needs an aligned DKIM pass", tell)
    if evidence.asks_read_only:
        if genuine:
            return Verdict("staff_action", action="read_only")
        return _quarantine("unauthenticated", f"request refused: {why}", tell)
    if evidence.client_refs:
        detail = ("a client-visible reference (acknowledgement Message-ID, [PD-n] subject, "
                  "the client's Message-ID) carries no staff authority: reply to the "
                  "staff notification")
        return _quarantine("unauthenticated", f"{detail}; {why}" if why else detail, tell)
    if genuine:
        return _quarantine("no_ticket", "staff email with no ticket token and no #org, "
                           "#requester or request", tell)
    return _quarantine("unauthenticated", f"staff email not trusted: {why}", tell)


def _contact(evidence: Evidence) -> Verdict:
    org = evidence.sender.org_slug
    if org is None:
        return _quarantine("unknown_sender", "no org to file this email under")
    if evidence.org_require_dkim and evidence.dkim is not True:
        how = "DKIM not checked" if evidence.dkim is None else "DKIM failed"
        return _quarantine("unauthenticated", f"org {org} requires DKIM: {how}")
    return _as_client(evidence, org)


def decide(evidence: Evidence) -> Verdict:
    """What this email may do (see the module's table of rules)."""
    if evidence.released:
        return _released(evidence)
    if evidence.sender.kind == "staff":
        return _staff(evidence)
    if evidence.sender.kind == "contact":
        return _contact(evidence)
    shown = evidence.sender.email or "(no From)"
    return _quarantine("unknown_sender",
                       f"{shown} is not staff, a listed contact or in an org's domains")


# --- the table of cases -------------------------------------------------------------------

SenderCase = Literal[
    "staff",
    "contact",
    "contact of an org with require_dkim",
    "unknown",
    "released: staff From",
    "released: contact",
    "released: unknown sender",
    "released without an org: contact",
    "released without an org: unknown sender",
]
TokenCase = Literal[
    "staff token",
    "client token, ticket of the sender's org",
    "client token, ticket the sender is on",
    "client token, another org's ticket",
    "#org / #requester",
    "read-only request",
    "none",
    "any",
]
EnvelopeCase = Literal["exact", "same domain", "foreign", "null", "not exact", "any"]
DkimCase = Literal["pass", "fail", "unchecked", "any"]
Setting = Literal["staff_require_dkim", "staff_unverified_on_behalf"]

_SENDER_TEXT: dict[SenderCase, str] = {
    "staff": "staff",
    "contact": "client",
    "contact of an org with require_dkim": "client, org requires DKIM",
    "unknown": "unknown sender",
    "released: staff From": "released, From is staff",
    "released: contact": "released, From is a client",
    "released: unknown sender": "released, unknown sender",
    "released without an org: contact": "released without an org, client",
    "released without an org: unknown sender": "released without an org, unknown sender",
}
_TOKEN_TEXT: dict[TokenCase, str] = {
    "staff token": "staff-only token",
    "client token, ticket of the sender's org": "client token, own org's ticket",
    "client token, ticket the sender is on": "client token, ticket the sender is on",
    "client token, another org's ticket": "client token, other org's ticket",
    "#org / #requester": "none; `#org`/`#requester`",
    "read-only request": "none; queue request",
    "none": "none",
    "any": "any",
}
_ENVELOPE_TEXT: dict[EnvelopeCase, str] = {
    "exact": "= From",
    "same domain": "other address, same domain",
    "foreign": "other domain",
    "null": "null (`<>`)",
    "not exact": "not = From",
    "any": "any",
}


@dataclass(frozen=True)
class TrustRow:
    """One case: a kind of sender with a kind of token under given checks may do this."""

    sender: SenderCase
    token: TokenCase
    envelope: EnvelopeCase
    dkim: DkimCase
    settings: tuple[Setting, ...]
    verdict: VerdictKind
    reason: QuarantineReason | None = None
    note: str = ""

    @property
    def outcome(self) -> str:
        if self.verdict == "quarantine":
            return f"quarantine `{self.reason}`"
        if self.verdict == "staff_reply":
            return "**staff reply**: commands + relay on the token's ticket"
        if self.verdict == "client_content":
            return "client content on that ticket"
        if self.verdict == "staff_action":
            return "**staff action** (no ticket)"
        released = self.sender.startswith("released") and self.sender != (
            "released without an org: contact")
        return "new ticket, " + ("release org" if released else "sender's org")


def _row(sender: SenderCase, token: TokenCase, envelope: EnvelopeCase, dkim: DkimCase,
         verdict: VerdictKind, reason: QuarantineReason | None = None, *,
         settings: tuple[Setting, ...] = (), note: str = "") -> TrustRow:
    return TrustRow(sender, token, envelope, dkim, settings, verdict, reason, note)


_RD: tuple[Setting, ...] = ("staff_require_dkim",)
_UNV: tuple[Setting, ...] = ("staff_unverified_on_behalf",)

TRUST_TABLE: tuple[TrustRow, ...] = (
    # Staff: a staff-only token, the exact envelope, DKIM where required.
    _row("staff", "staff token", "exact", "any", "staff_reply",
         note="DKIM is not required unless staff_require_dkim"),
    _row("staff", "staff token", "exact", "pass", "staff_reply", settings=_RD),
    _row("staff", "staff token", "exact", "fail", "quarantine", "unauthenticated",
         settings=_RD),
    _row("staff", "staff token", "exact", "unchecked", "quarantine", "unauthenticated",
         settings=_RD, note="no result is not a pass"),
    _row("staff", "staff token", "not exact", "any", "quarantine", "unauthenticated",
         note="the address, not its domain; never the null sender"),
    _row("staff", "client token, another org's ticket", "exact", "pass", "quarantine",
         "unauthenticated", note="tokens clients see never carry staff authority"),
    _row("staff", "client token, ticket the sender is on", "exact", "pass", "quarantine",
         "unauthenticated"),
    _row("staff", "client token, another org's ticket", "not exact", "any", "quarantine",
         "unauthenticated"),
    _row("staff", "#org / #requester", "exact", "pass", "staff_action",
         note="ticket on a client's behalf"),
    _row("staff", "#org / #requester", "exact", "pass", "staff_action", settings=_RD),
    _row("staff", "#org / #requester", "exact", "unchecked", "quarantine", "unauthenticated"),
    _row("staff", "#org / #requester", "exact", "unchecked", "staff_action", settings=_UNV,
         note="only where the desk cannot verify and the operator allowed it"),
    _row("staff", "#org / #requester", "exact", "fail", "quarantine", "unauthenticated",
         settings=_UNV),
    _row("staff", "#org / #requester", "exact", "unchecked", "quarantine", "unauthenticated",
         settings=("staff_require_dkim", "staff_unverified_on_behalf")),
    _row("staff", "#org / #requester", "not exact", "any", "quarantine", "unauthenticated",
         settings=_UNV),
    _row("staff", "read-only request", "exact", "any", "staff_action",
         note="the answer goes to the configured staff address"),
    _row("staff", "read-only request", "exact", "unchecked", "quarantine",
         "unauthenticated", settings=_RD),
    _row("staff", "read-only request", "not exact", "any", "quarantine", "unauthenticated"),
    _row("staff", "none", "exact", "any", "quarantine", "no_ticket"),
    _row("staff", "none", "exact", "fail", "quarantine", "unauthenticated", settings=_RD),
    _row("staff", "none", "not exact", "any", "quarantine", "unauthenticated"),
    # Clients: their own org's tickets and tickets they are on; nothing else.
    _row("contact", "client token, ticket of the sender's org", "any", "any",
         "client_content"),
    _row("contact", "client token, ticket the sender is on", "any", "any", "client_content",
         note="requester or cc added by staff"),
    _row("contact", "client token, another org's ticket", "any", "any", "new_ticket",
         note="the reference is ignored; nothing reveals the other ticket"),
    _row("contact", "staff token", "any", "any", "new_ticket",
         note="a staff token gives a client nothing"),
    _row("contact", "#org / #requester", "any", "any", "new_ticket",
         note="`#` lines from a client are only text"),
    _row("contact", "none", "any", "any", "new_ticket"),
    _row("contact of an org with require_dkim", "client token, ticket of the sender's org",
         "any", "pass", "client_content"),
    _row("contact of an org with require_dkim", "any", "any", "fail", "quarantine",
         "unauthenticated"),
    _row("contact of an org with require_dkim", "any", "any", "unchecked", "quarantine",
         "unauthenticated"),
    _row("unknown", "any", "any", "any", "quarantine", "unknown_sender"),
    # Release is not a pardon: client content for the chosen org, never staff authority.
    _row("released: staff From", "staff token", "exact", "pass", "new_ticket",
         settings=_RD, note="never runs commands or relays as staff"),
    _row("released: staff From", "#org / #requester", "exact", "pass", "new_ticket"),
    _row("released: staff From", "client token, ticket of the sender's org", "exact", "any",
         "client_content"),
    _row("released: staff From", "client token, another org's ticket", "exact", "any",
         "new_ticket"),
    _row("released: contact", "client token, ticket of the sender's org", "any", "any",
         "client_content", note="DKIM is not checked again: the operator vouched"),
    _row("released: contact", "client token, another org's ticket", "any", "any",
         "new_ticket"),
    _row("released: unknown sender", "none", "any", "any", "new_ticket"),
    _row("released: unknown sender", "staff token", "any", "any", "new_ticket"),
    _row("released without an org: contact", "none", "any", "any", "new_ticket"),
    _row("released without an org: unknown sender", "any", "any", "any", "quarantine",
         "unknown_sender"),
)


def trust_table_markdown(rows: tuple[TrustRow, ...] = TRUST_TABLE) -> str:
    """The table as Markdown, for the security documentation (kept identical by a test)."""
    lines = ["| sender | token | envelope sender | DKIM | settings | may do | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        settings = ", ".join(f"`{s}`" for s in r.settings) or "-"
        lines.append(f"| {_SENDER_TEXT[r.sender]} | {_TOKEN_TEXT[r.token]} | "
                     f"{_ENVELOPE_TEXT[r.envelope]} | {r.dkim} | {settings} | {r.outcome} | "
                     f"{r.note} |")
    return "\n".join(lines) + "\n"
