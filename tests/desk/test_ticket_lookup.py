"""What an inbound email's references point at (``gather_references``): staff tokens (a
signed staff-purpose Message-ID of ours, the signed reply address) apart from client
references (a signed client-purpose Message-ID of ours, the client's own earlier
Message-IDs, the ``[PD-n]`` subject token). Gathering decides nothing about the sender:
which references the sender may use is the trust decision's (``tests/rules/test_trust.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.orm import Session

from postdesk.mail.tokens import Purpose, make_message_id, make_reply_address
from postdesk.storage.models import Message, Ticket
from postdesk.workflow.desk.ticket_lookup import References, client_thread, gather_references
from postdesk.workflow.rules.trust import TicketRef
from tests.desk.conftest import SECRET

NOTHING = References(None, None, ())


def ours(ticket: Ticket | int, nonce: str = "a1b2c3", secret: bytes = SECRET,
         purpose: Purpose = "client") -> str:
    tid = ticket if isinstance(ticket, int) else ticket.id
    return make_message_id(secret, tid, nonce, "desk.example", purpose=purpose)


def staff_id(ticket: Ticket | int, nonce: str = "a1b2c3", secret: bytes = SECRET) -> str:
    return ours(ticket, nonce, secret, purpose="staff")


def reply_address(ticket: Ticket, secret: bytes = SECRET) -> str:
    return make_reply_address(secret, "support@desk.example", "PD", ticket.id)


def gather(session: Session, *, in_reply_to: str | None = None,
           references: Sequence[str] = (),
           recipients: Sequence[str] = ("support@desk.example",),
           subject: str = "Hello") -> References:
    return gather_references(session, secret=SECRET, prefix="PD", in_reply_to=in_reply_to,
                             references=list(references), recipients=list(recipients),
                             subject=subject)


def client_refs(refs: References) -> list[tuple[int, str]]:
    return [(r.ticket_id, r.how) for r in refs.client_refs]


def staff_token(refs: References) -> tuple[int | None, str | None]:
    return refs.staff_token_ticket, refs.staff_token_how


# --- our Message-IDs: the purpose decides what they are ------------------------------------

def test_a_client_purpose_id_of_ours_is_a_client_reference_not_a_staff_token(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    """An acknowledgement's Message-ID: the client saw it, so it only threads."""
    ticket = new_ticket(cc=["carol@client.example"])
    refs = gather(session, in_reply_to=ours(ticket))
    assert staff_token(refs) == (None, None)
    assert refs.client_refs == (TicketRef(
        ticket_id=ticket.id, org_slug="clientco",
        participants=frozenset({"alice@client.example", "carol@client.example"}),
        how="our_message_id"),)


def test_a_staff_purpose_id_of_ours_is_a_staff_token_and_no_client_reference(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    """A staff notification's Message-ID: only staff received it."""
    ticket = new_ticket()
    refs = gather(session, references=[staff_id(ticket)])
    assert staff_token(refs) == (ticket.id, "our_message_id")
    assert refs.client_refs == ()


def test_the_signed_reply_address_is_a_staff_token(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    refs = gather(session, recipients=["support@desk.example", reply_address(ticket)])
    assert staff_token(refs) == (ticket.id, "reply_address")
    assert refs.client_refs == ()


def test_a_staff_id_in_the_thread_comes_before_the_reply_address(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    by_id, by_address = new_ticket(), new_ticket()
    refs = gather(session, in_reply_to=staff_id(by_id),
                  recipients=[reply_address(by_address)])
    assert staff_token(refs) == (by_id.id, "our_message_id")


def test_the_newest_staff_id_in_the_thread_is_the_staff_token(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    older, newer = new_ticket(), new_ticket()
    refs = gather(session, references=[staff_id(older), staff_id(newer)])
    assert staff_token(refs) == (newer.id, "our_message_id")
    refs = gather(session, in_reply_to=staff_id(older), references=[staff_id(newer)])
    assert staff_token(refs) == (older.id, "our_message_id")


def test_client_references_come_newest_first_each_ticket_once(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    older, newer = new_ticket(), new_ticket()
    refs = gather(session, references=[ours(older), ours(newer), ours(older, "d4e5f6")])
    assert client_refs(refs) == [(older.id, "our_message_id"), (newer.id, "our_message_id")]
    refs = gather(session, in_reply_to=ours(newer), references=[ours(older)])
    assert client_refs(refs) == [(newer.id, "our_message_id"), (older.id, "our_message_id")]


def test_a_client_id_and_a_staff_id_in_one_thread_are_kept_apart(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    acknowledged, notified = new_ticket(), new_ticket()
    refs = gather(session, references=[ours(acknowledged), staff_id(notified)])
    assert staff_token(refs) == (notified.id, "our_message_id")
    assert client_refs(refs) == [(acknowledged.id, "our_message_id")]


# --- forgeries find nothing ---------------------------------------------------------------

@pytest.mark.parametrize("purpose", ["client", "staff"])
@pytest.mark.parametrize("forge", [
    lambda mid, other: mid[:-15] + ("0" if mid[-15] != "0" else "1") + mid[-14:],
    lambda mid, other: mid.replace("-a1b2c3-", "-a1b2c4-"),
    lambda mid, other: mid.replace(f"-{other.id - 1}-a1b2c3-", f"-{other.id}-a1b2c3-"),
], ids=["one-signature-digit", "another-nonce", "another-ticket"])
def test_a_forged_signature_finds_nothing(
        session: Session, new_ticket: Callable[..., Ticket],
        forge: Callable[[str, Ticket], str], purpose: Purpose) -> None:
    ticket = new_ticket()
    other = new_ticket()
    assert other.id == ticket.id + 1
    genuine = ours(ticket, purpose=purpose)
    forged = forge(genuine, other)
    assert forged != genuine
    assert gather(session, in_reply_to=forged) == NOTHING


def test_a_client_id_turned_into_a_staff_id_finds_nothing(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    """The purpose is inside the signature: an acknowledgement's id, re-prefixed, is no
    staff token (and no longer a client reference either)."""
    ticket = new_ticket()
    acknowledgement = ours(ticket)
    assert acknowledgement.startswith("<pd-")
    promoted = "<pds-" + acknowledgement.removeprefix("<pd-")
    assert gather(session, in_reply_to=promoted) == NOTHING
    demoted = "<pd-" + staff_id(ticket).removeprefix("<pds-")
    assert gather(session, in_reply_to=demoted) == NOTHING


@pytest.mark.parametrize("purpose", ["client", "staff"])
def test_a_message_id_signed_with_another_secret_finds_nothing(
        session: Session, new_ticket: Callable[..., Ticket], purpose: Purpose) -> None:
    ticket = new_ticket()
    assert gather(session, in_reply_to=ours(ticket, secret=b"another desk",
                                            purpose=purpose)) == NOTHING


def test_a_forged_reply_address_finds_nothing(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    assert gather(session, recipients=[reply_address(ticket, secret=b"guess")]) == NOTHING


def test_our_ids_about_no_ticket_or_a_missing_ticket_find_nothing(session: Session) -> None:
    for purpose in ("client", "staff"):
        assert gather(session, references=[ours(0, purpose=purpose),
                                           ours(999999, purpose=purpose)]) == NOTHING


# --- the client's own thread ----------------------------------------------------------------

def test_a_reply_to_the_clients_own_earlier_email_is_a_client_message_id_reference(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Message]) -> None:
    new_ticket()
    ticket = new_ticket("baseco", "bob@base.example")
    add_message(ticket, "<first@base.example>")
    refs = gather(session, references=["<unrelated@elsewhere.example>",
                                       "<first@base.example>"])
    assert staff_token(refs) == (None, None)
    assert refs.client_refs == (TicketRef(
        ticket_id=ticket.id, org_slug="baseco", participants=frozenset({"bob@base.example"}),
        how="client_message_id"),)


def test_our_signed_id_comes_before_the_clients_own_ids(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Message]) -> None:
    threaded, signed = new_ticket(), new_ticket()
    add_message(threaded, "<first@client.example>")
    refs = gather(session, references=["<first@client.example>", ours(signed)])
    assert client_refs(refs) == [(signed.id, "our_message_id"),
                                 (threaded.id, "client_message_id")]


# --- the [PD-n] subject token ----------------------------------------------------------------

def test_the_subject_token_is_a_subject_reference_with_the_tickets_org_and_listed_people(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Message]) -> None:
    """Participants are the requester and the cc staff added, lowercased; never someone
    who merely wrote on the ticket (that is how another org's client would get in)."""
    ticket = new_ticket(requester="Alice@Client.example", cc=["Bob@Base.example"])
    add_message(ticket, "<m1@elsewhere.example>", from_addr="mallory@elsewhere.example")
    refs = gather(session, subject=f"Re: [PD-{ticket.id}] x")
    assert staff_token(refs) == (None, None)
    assert refs.client_refs == (TicketRef(
        ticket_id=ticket.id, org_slug="clientco",
        participants=frozenset({"alice@client.example", "bob@base.example"}),
        how="subject"),)


def test_the_subject_token_is_gathered_whoever_sends_it(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    """Gathering does not know the sender: another org's ticket is gathered all the same,
    and the trust decision ignores it for a client of another org."""
    ticket = new_ticket("baseco", "bob@base.example")
    refs = gather(session, subject=f"[PD-{ticket.id}] x")
    assert [(r.ticket_id, r.org_slug, r.how) for r in refs.client_refs] == [
        (ticket.id, "baseco", "subject")]


def test_a_ticket_named_by_our_id_and_by_subject_is_one_reference_by_the_stronger(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket, other = new_ticket(), new_ticket()
    refs = gather(session, in_reply_to=ours(ticket), subject=f"Re: [PD-{ticket.id}] x")
    assert client_refs(refs) == [(ticket.id, "our_message_id")]
    refs = gather(session, in_reply_to=ours(ticket), subject=f"Re: [PD-{other.id}] x")
    assert client_refs(refs) == [(ticket.id, "our_message_id"), (other.id, "subject")]


def test_a_subject_token_naming_no_ticket_finds_nothing(session: Session) -> None:
    assert gather(session, subject="[PD-999999] anyone there?") == NOTHING


def test_a_subject_token_beyond_any_ticket_number_finds_nothing(session: Session) -> None:
    assert gather(session, subject="[PD-99999999999999999999999] hi") == NOTHING


def test_a_subject_token_of_another_prefix_finds_nothing(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    assert gather(session, subject=f"[XX-{ticket.id}] x") == NOTHING


# --- client_thread ----------------------------------------------------------------------------

def test_client_thread_replies_to_the_clients_latest_email_with_what_the_client_saw(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Message]) -> None:
    ticket = new_ticket()
    add_message(ticket, "<c1@client.example>")
    add_message(ticket, "<ack@desk.example>", direction="out", kind="system")
    add_message(ticket, "<note@agency.example>", staff="dev1@agency.example",
                kind="internal")
    add_message(ticket, "<staff-mail@agency.example>", staff="dev1@agency.example")
    add_message(ticket, "<relay@desk.example>", direction="out", kind="public")
    add_message(ticket, "<c2@client.example>")

    in_reply_to, references = client_thread(session, ticket)

    assert in_reply_to == "<c2@client.example>"
    assert references == ["<c1@client.example>", "<ack@desk.example>",
                          "<relay@desk.example>", "<c2@client.example>"]


def test_client_thread_of_a_ticket_opened_by_staff_has_nothing_to_reply_to(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Message]) -> None:
    ticket = new_ticket()
    add_message(ticket, "<opened@agency.example>", staff="dev1@agency.example",
                kind="internal")
    assert client_thread(session, ticket) == (None, [])
