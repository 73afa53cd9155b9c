"""``#merge PD-n`` and ``#split`` over real SMTP, with what every party receives, and
the attacks: a forged staff From merges nothing; nobody merges across orgs; a client's
``#merge`` line is only text."""

from __future__ import annotations

import email
from email import policy

import pytest
from sqlalchemy import select

from postdesk.storage.models import Event, RawMessage
from tests.mailshapes import reply
from tests.support import BASECO, make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")


def client_email(desk, sender, subject, body, in_reply_to=None):
    msg = make_email(sender=sender, subject=subject, body=body, in_reply_to=in_reply_to,
                     references=in_reply_to)
    desk.send(msg)
    desk.wait_settled()
    return msg


def staff_reply(desk, note, text, mail_from="dev1@agency.example", client="gmail",
                quoted="Checkout is broken."):
    desk.send(reply(client, sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                    text=text, quoted=quoted, in_reply_to=note["message_id"]),
              mail_from=mail_from)
    desk.wait_settled()


def note_for(desk, ref):
    return [r for r in desk.outbox(template="staff_notification")
            if r["subject"].startswith(f"[{ref}]")][-1]


def text_of(desk, row):
    msg = email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)
    return msg.get_body(("plain",)).get_content()


def inbound_from(desk, ref):
    return [m["from"] for m in desk.ticket(ref)["messages"] if m["direction"] == "in"]


def event_kinds(desk, ticket_id):
    with desk.app.sessions() as s:
        return [e.kind for e in s.scalars(select(Event).where(Event.ticket_id == ticket_id))]


def two_tickets(make_desk, extra=""):
    desk = make_desk(extra=extra)
    alice = client_email(desk, "alice@client.example", "Checkout is broken",
                         "Checkout is broken.")
    bob = client_email(desk, "bob@client.example", "Cannot pay", "The pay button fails.")
    return desk, alice, bob


def test_merge_moves_the_conversation_and_tells_the_merged_tickets_client_once(make_desk):
    desk, _, _ = two_tickets(make_desk)
    before = len(desk.outbox())
    staff_reply(desk, note_for(desk, "PD-2"), "#merge PD-1", quoted="The pay button fails.")

    new = desk.outbox()[before:]
    assert [(r["template"], r["to"]) for r in new] == [
        ("ticket_merged", ["bob@client.example"])]       # alice, dev1: nothing
    told = text_of(desk, new[0])
    assert "PD-2" in told and "PD-1" in told and "replies to either email reach us" in told
    merged, kept = desk.ticket("PD-2"), desk.ticket("PD-1")
    assert merged["status"] == "closed"
    # All that stays on the merged ticket: the notice that points to the kept one.
    assert [(m["direction"], m["kind"]) for m in merged["messages"]] == [("out", "system")]
    assert "PD-1" in merged["messages"][0]["text"]
    assert [m["from"] for m in kept["messages"] if m["direction"] == "in"] == [
        "alice@client.example", "bob@client.example", "dev1@agency.example"]
    assert kept["cc"] == ["bob@client.example"]
    assert "merged_into" in event_kinds(desk, 2) and "merged_from" in event_kinds(desk, 1)


def test_after_a_merge_replies_to_either_thread_land_on_the_kept_ticket(make_desk):
    desk, _, bob = two_tickets(make_desk)
    old_note = note_for(desk, "PD-2")
    staff_reply(desk, old_note, "#merge PD-1", quoted="The pay button fails.")
    bob_ack = [r for r in desk.acks() if r["to"] == ["bob@client.example"]][0]
    client_email(desk, "bob@client.example", "Re: [PD-2] Cannot pay", "Any news?",
                 in_reply_to=bob_ack["message_id"])
    assert len(desk.tickets()) == 2                      # no new ticket
    kept = desk.ticket("PD-1")
    assert kept["messages"][-1]["text"].startswith("Any news?")
    assert desk.ticket("PD-2")["status"] == "closed"
    assert note_for(desk, "PD-1")["subject"] == "[PD-1] Checkout is broken"

    # The staff member answers the old PD-2 notification: it reaches PD-1's people.
    staff_reply(desk, old_note, "Both fixed now.", quoted="The pay button fails.")
    [relay] = desk.outbox(template="staff_reply")
    assert relay["to"] == ["alice@client.example"] and relay["cc"] == ["bob@client.example"]
    assert relay["subject"] == "Re: [PD-1] Checkout is broken"
    assert len(desk.outbox(template="ticket_merged")) == 1   # told once


def test_staff_cannot_merge_a_ticket_into_another_orgs_ticket(make_desk):
    desk, _, _ = two_tickets(make_desk, extra=BASECO)
    client_email(desk, "carol@base.example", "Other org", "Base Co problem.")
    before = len(desk.outbox())
    staff_reply(desk, note_for(desk, "PD-2"), "#merge PD-3\nMerging.",
                quoted="The pay button fails.")
    new = desk.outbox()[before:]
    assert [(r["template"], r["to"]) for r in new] == [
        ("command_errors", ["dev1@agency.example"])]
    assert "belongs to another org" in text_of(desk, new[0])
    assert desk.ticket("PD-2")["status"] != "closed"
    assert inbound_from(desk, "PD-3") == ["carol@base.example"]


def test_a_client_cannot_merge_into_another_orgs_ticket(make_desk):
    desk, _, bob = two_tickets(make_desk, extra=BASECO)
    client_email(desk, "carol@base.example", "Other org", "Base Co problem.")
    bob_ack = [r for r in desk.acks() if r["to"] == ["bob@client.example"]][0]
    client_email(desk, "bob@client.example", "Re: [PD-2] Cannot pay",
                 "#merge PD-3\n#merge PD-1", in_reply_to=bob_ack["message_id"])
    assert desk.ticket("PD-2")["status"] != "closed"
    assert inbound_from(desk, "PD-3") == ["carol@base.example"]
    assert inbound_from(desk, "PD-1") == ["alice@client.example"]
    assert desk.outbox(template="ticket_merged") == []
    assert all("carol@base.example" not in r["to"] for r in desk.outbox()
               if r["template"] != "acknowledgement")


def test_a_forged_staff_merge_does_nothing_and_the_real_staff_member_is_told(make_desk):
    desk, _, _ = two_tickets(make_desk)
    before = len(desk.outbox())
    staff_reply(desk, note_for(desk, "PD-2"), "#merge PD-1",
                mail_from="attacker@evil.example", quoted="The pay button fails.")
    new = desk.outbox()[before:]
    assert [(r["template"], r["to"]) for r in new] == [
        ("staff_quarantine_notice", ["dev1@agency.example"])]
    assert desk.ticket("PD-2")["status"] != "closed"
    assert "merged_into" not in event_kinds(desk, 2)
    with desk.app.sessions() as s:
        raw = s.scalars(select(RawMessage).order_by(RawMessage.id.desc())).first()
        assert (raw.status, raw.reason) == ("quarantined", "unauthenticated")


def test_split_moves_the_quoted_client_message_into_a_new_ticket(make_desk):
    desk = make_desk()
    alice = client_email(desk, "alice@client.example", "Checkout is broken",
                         "Checkout is broken.")
    ack = desk.acks()[0]
    vat = client_email(desk, "alice@client.example", "Re: [PD-1] Checkout is broken",
                       "Also, the invoice PDF shows the wrong VAT number.",
                       in_reply_to=ack["message_id"])
    before = len(desk.outbox())
    staff_reply(desk, desk.outbox(template="staff_notification")[-1],
                "#split\nI have opened a separate ticket for the VAT question.",
                client="outlook", quoted="Also, the invoice PDF shows the wrong VAT number.")

    assert len(desk.tickets()) == 2
    new_ticket, old_ticket = desk.ticket("PD-2"), desk.ticket("PD-1")
    assert new_ticket["requester"] == "alice@client.example"
    assert new_ticket["assignee"] == "dev1@agency.example"
    assert [m["text"].strip() for m in new_ticket["messages"] if m["direction"] == "in"][0] \
        .startswith("Also, the invoice PDF")
    assert all("VAT" not in (m["text"] or "") for m in old_ticket["messages"])
    new = desk.outbox()[before:]
    assert [(r["template"], r["to"]) for r in new] == [
        ("ticket_split", ["alice@client.example"]),
        ("staff_reply", ["alice@client.example"])]
    assert "now handle it on its own as PD-2" in text_of(desk, new[0])
    split_notice = email.message_from_bytes(desk.outbox_raw(new[0]["id"]),
                                            policy=policy.default)
    assert split_notice["In-Reply-To"] == vat["Message-ID"]
    assert new[1]["subject"] == "Re: [PD-2] Checkout is broken"
    assert "split_into" in event_kinds(desk, 1) and "split_from" in event_kinds(desk, 2)
    assert alice["Message-ID"] not in (split_notice["References"] or "")


def test_split_of_a_tickets_only_message_is_a_command_error(make_desk):
    desk = make_desk()
    client_email(desk, "alice@client.example", "Checkout is broken", "Checkout is broken.")
    staff_reply(desk, desk.outbox(template="staff_notification")[-1], "#split")
    [errors] = desk.outbox(template="command_errors")
    assert "only client message" in text_of(desk, errors)
    assert len(desk.tickets()) == 1 and desk.outbox(template="ticket_split") == []
