"""Which ticket an inbound email belongs to, in order of trust: our signed Message-IDs,
the signed reply address, the client's own earlier Message-IDs, and the ``[PD-n]`` subject
token only for someone who belongs on that ticket."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.orm import Session

from postdesk.mail.tokens import make_message_id, make_reply_address
from postdesk.storage.directory import org_by_slug
from postdesk.storage.models import Message, Ticket
from postdesk.workflow.desk.ticket_lookup import TicketMatch, client_thread, find_ticket
from tests.desk.conftest import SECRET


def ours(ticket: Ticket, nonce: str = "a1b2c3", secret: bytes = SECRET) -> str:
    return make_message_id(secret, ticket.id, nonce, "desk.example")


def lookup(session: Session, *, sender: str = "alice@client.example",
           in_reply_to: str | None = None, references: Sequence[str] = (),
           recipients: Sequence[str] = ("support@desk.example",), subject: str = "Hello",
           staff: bool = False) -> TicketMatch | None:
    org_slug = {"client.example": "clientco", "base.example": "baseco"}.get(
        sender.rsplit("@", 1)[1])
    org = org_by_slug(session, org_slug) if org_slug else None
    return find_ticket(session, secret=SECRET, prefix="PD", in_reply_to=in_reply_to,
                       references=list(references), recipients=list(recipients),
                       subject=subject, sender=sender,
                       sender_org_id=org.id if org else None, sender_is_staff=staff)


def found(match: TicketMatch | None) -> tuple[int, str] | None:
    return (match.ticket.id, match.how) if match else None


def test_our_signed_message_id_finds_its_ticket(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    assert found(lookup(session, in_reply_to=ours(ticket))) == (ticket.id, "our_message_id")


def test_our_signed_message_id_finds_its_ticket_for_any_sender(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    """The signature is the proof: a forwarded reply from another org still lands."""
    ticket = new_ticket()
    match = lookup(session, sender="bob@base.example", references=[ours(ticket)])
    assert found(match) == (ticket.id, "our_message_id")


@pytest.mark.parametrize("forge", [
    lambda mid, other: mid[:-15] + ("0" if mid[-15] != "0" else "1") + mid[-14:],
    lambda mid, other: mid.replace("-a1b2c3-", "-a1b2c4-"),
    lambda mid, other: mid.replace(f"<pd-{other.id - 1}-", f"<pd-{other.id}-"),
], ids=["one-signature-digit", "another-nonce", "another-ticket"])
def test_a_forged_signature_finds_no_ticket(
        session: Session, new_ticket: Callable[..., Ticket],
        forge: Callable[[str, Ticket], str]) -> None:
    ticket = new_ticket()
    other = new_ticket()
    assert other.id == ticket.id + 1
    forged = forge(ours(ticket), other)
    assert forged != ours(ticket)
    assert lookup(session, in_reply_to=forged) is None


def test_a_message_id_signed_with_another_secret_finds_no_ticket(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    assert lookup(session, in_reply_to=ours(ticket, secret=b"another desk")) is None


def test_the_newest_of_our_ids_in_the_thread_wins(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    older, newer = new_ticket(), new_ticket()
    match = lookup(session, references=[ours(older), ours(newer)])
    assert found(match) == (newer.id, "our_message_id")
    match = lookup(session, in_reply_to=ours(older), references=[ours(newer)])
    assert found(match) == (older.id, "our_message_id")


def test_the_signed_reply_address_finds_its_ticket(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    address = make_reply_address(SECRET, "support@desk.example", "PD", ticket.id)
    match = lookup(session, sender="dev1@agency.example", staff=True,
                   recipients=["support@desk.example", address])
    assert found(match) == (ticket.id, "reply_address")


def test_a_forged_reply_address_finds_no_ticket(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    address = make_reply_address(b"guess", "support@desk.example", "PD", ticket.id)
    assert lookup(session, sender="dev1@agency.example", recipients=[address]) is None


def test_a_reply_to_the_clients_own_earlier_email_finds_its_ticket(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Message]) -> None:
    new_ticket()
    ticket = new_ticket()
    add_message(ticket, "<first@client.example>")
    match = lookup(session, sender="carol@client.example",
                   references=["<unrelated@elsewhere.example>", "<first@client.example>"])
    assert found(match) == (ticket.id, "known_message_id")


def test_the_subject_token_finds_a_ticket_of_the_senders_own_org(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    match = lookup(session, sender="carol@client.example", subject=f"Re: [PD-{ticket.id}] x")
    assert found(match) == (ticket.id, "subject_token")


def test_the_subject_token_from_a_sender_of_another_org_finds_nothing(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()                                   # Client Co's
    assert lookup(session, sender="bob@base.example", subject=f"[PD-{ticket.id}] x") is None
    assert lookup(session, sender="mallory@elsewhere.example",
                  subject=f"[PD-{ticket.id}] x") is None


def test_the_subject_token_admits_someone_already_on_the_ticket(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket(cc=["bob@base.example"])
    match = lookup(session, sender="bob@base.example", subject=f"[PD-{ticket.id}] x")
    assert found(match) == (ticket.id, "subject_token")


def test_the_subject_token_admits_staff(
        session: Session, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    match = lookup(session, sender="dev1@agency.example", staff=True,
                   subject=f"[PD-{ticket.id}] x")
    assert found(match) == (ticket.id, "subject_token")


def test_a_subject_token_naming_no_ticket_finds_nothing(session: Session) -> None:
    assert lookup(session, subject="[PD-999999] anyone there?") is None


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
