"""Issue 9, tried as an attacker would, over real SMTP (SQLite and PostgreSQL + Redis).

Each attack, as the issue describes it, must change nothing: no ticket opened or changed,
no cc added, nothing relayed, no page. Staff forgeries are quarantined `unauthenticated`
and the genuine staff member is told once (template `staff_quarantine_notice`, to the
configured address); cross-org references are handled as a new ticket of the sender's
own org. The genuine paths still work."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from postdesk.storage.models import TimeEntry
from postdesk.workflow.pipeline.quarantine import release
from postdesk.workflow.rules.clock import ManualClock
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)   # dev1 is on rota this week
NOTICE = "staff_quarantine_notice"
STAFF = "dev1@agency.example"
ATTACKER = "attacker@evil.example"

ORGB = """
[[orgs]]
slug = "orgb"
name = "Org B"
plan = "base"
domains = ["clientb.example"]
"""

# Attack 1: no ticket reference, a ticket for org B on the attacker's terms.
ON_BEHALF = f"""#org orgb
#requester bob@clientb.example
#cc {ATTACKER}
#priority P1
#chargeable
Bob phoned: please reset the admin password and send it to the cc.
"""

# Attack 2: the commands a client would like to run on their own ticket.
STAFF_COMMANDS = """#status closed
#priority P1
#assign dev2@agency.example
#time 9h
All fixed. Please confirm your login at http://evil.example/login
"""


# --- helpers ------------------------------------------------------------------------------

def new_desk(make_desk: Any, desk_extra: str = "") -> Any:
    return make_desk(clock=ManualClock(MONDAY_10), extra=ORGB, desk_extra=desk_extra)


def open_ticket(desk: Any, sender: str = "alice@client.example",
                subject: str = "Checkout is broken", **kw: Any) -> Any:
    msg = make_email(sender=sender, subject=subject, body="Checkout is broken.", **kw)
    desk.send(msg)
    desk.wait_settled()
    return msg


def snapshot(desk: Any) -> dict[str, Any]:
    """Everything an attack could change: every ticket with its messages, and time logged."""
    with desk.app.sessions() as s:
        seconds = s.scalar(select(func.coalesce(func.sum(TimeEntry.seconds), 0)))
    return {"tickets": {t["ref"]: desk.ticket(t["ref"]) for t in desk.tickets()},
            "time_logged": seconds}


def new_outbox(desk: Any, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {o["id"] for o in before}
    return [o for o in desk.outbox() if o["id"] not in seen]


def text_of(desk: Any, outbox_id: int) -> str:
    sent = email.message_from_bytes(desk.outbox_raw(outbox_id), policy=policy.default)
    body = sent.get_body(("plain",))
    assert body is not None
    return f"{sent['Subject']}\n{body.get_content()}".replace("\r\n", "\n")


def assert_staff_told_once(desk: Any, about: str, staff: str = STAFF) -> None:
    """One short email to the configured staff address, saying what arrived."""
    notices = desk.outbox(template=NOTICE)
    assert [n["to"] for n in notices] == [[staff]], (
        f"expected one {NOTICE} to {staff}; outbox: "
        f"{[(o['template'], o['to']) for o in desk.outbox()]}")
    assert about in text_of(desk, notices[0]["id"])


def quarantine_reasons(desk: Any) -> list[str | None]:
    return [r["reason"] for r in desk.raws() if r["status"] == "quarantined"]


# --- 1. an outsider runs staff commands and opens tickets ---------------------------------

@pytest.mark.parametrize("desk_extra", ["", "staff_require_dkim = true"],
                         ids=["default", "staff_require_dkim"])
def test_a_forged_staff_email_opens_no_ticket_on_anyones_behalf(make_desk, desk_extra):
    desk = new_desk(make_desk, desk_extra)
    subjects = ["Password reset for Org B", "Password reset for Org B, again"]
    for subject in subjects:
        desk.send(make_email(sender=STAFF, subject=subject, body=ON_BEHALF),
                  mail_from=ATTACKER)
    desk.wait_settled()

    assert desk.tickets() == [], "the forgery opened a ticket"
    assert desk.outbox(to=ATTACKER) == [], "the attacker was put on cc and mailed"
    assert desk.outbox(template="chargeable") == [], "the lead was emailed"
    assert desk.outbox(template="p1_page") == [], "staff were paged"
    assert quarantine_reasons(desk) == ["unauthenticated", "unauthenticated"]
    assert_staff_told_once(desk, about=subjects[0])
    assert [o["template"] for o in desk.outbox()] == [NOTICE]


# --- 2. a client runs staff commands on their own ticket ----------------------------------

@pytest.mark.parametrize(("cite", "envelope"), [
    ("acknowledgement", STAFF),                    # the staff envelope, spoofed exactly
    ("acknowledgement", "nobody@agency.example"),  # the staff domain, another address
    ("notification", "nobody@agency.example"),     # a real staff token, a wrong envelope
], ids=["ack-exact-envelope", "ack-same-domain-envelope", "notification-same-domain"])
def test_a_client_cannot_run_staff_commands_on_their_own_ticket(make_desk, cite, envelope):
    desk = new_desk(make_desk)
    client = open_ticket(desk)
    [ack] = desk.acks()
    [note] = desk.outbox(template="staff_notification")
    cited = ack if cite == "acknowledgement" else note
    before, outbox_before = snapshot(desk), desk.outbox()

    subject = f"Re: {cited['subject']}"
    forged = make_email(sender=STAFF, subject=subject, body=STAFF_COMMANDS,
                        in_reply_to=cited["message_id"],
                        references=f"{client['Message-ID']} {cited['message_id']}")
    desk.send(forged, mail_from=envelope)
    desk.wait_settled()

    assert snapshot(desk) == before, "the forged staff reply changed the ticket"
    assert desk.outbox(template="staff_reply") == [], "the attacker's text was relayed"
    assert desk.outbox(template="p1_page") == []
    assert [o["template"] for o in new_outbox(desk, outbox_before)] == [NOTICE]
    assert quarantine_reasons(desk) == ["unauthenticated"]
    assert_staff_told_once(desk, about=subject)


# --- 3. a client of org A gets into org B's ticket ----------------------------------------

def test_a_client_cannot_thread_into_another_orgs_ticket(make_desk):
    desk = new_desk(make_desk)
    bob = open_ticket(desk, sender="bob@clientb.example", subject="Invoice export fails",
                      message_id="<invoice-1@clientb.example>")
    [b_ticket] = desk.tickets()
    assert (b_ticket["ref"], b_ticket["org"]) == ("PD-1", "orgb")
    b_before = desk.ticket("PD-1")

    # Org A's client cites org B's client Message-ID (and would raise it to P1).
    desk.send(make_email(sender="alice@client.example", subject="Re: Invoice export fails",
                         body="Our site is down, total outage!",
                         in_reply_to=bob["Message-ID"], references=bob["Message-ID"]))
    desk.wait_settled()
    assert desk.ticket("PD-1") == b_before, "A's email landed on B's ticket"
    [a_ticket] = [t for t in desk.tickets() if t["ref"] != "PD-1"]
    assert (a_ticket["org"], a_ticket["requester"]) == ("clientco", "alice@client.example")
    assert [p for p in desk.outbox(template="p1_page") if p["ticket"] == "PD-1"] == []

    # Afterwards a bare [PD-1] subject: A is not on B's ticket, so it is ignored too.
    desk.send(make_email(sender="alice@client.example", subject="[PD-1] still broken",
                         body="Any news on this?"))
    desk.wait_settled()
    assert desk.ticket("PD-1") == b_before, "a bare [PD-1] subject got A into B's ticket"
    mine = [t for t in desk.tickets() if t["ref"] != "PD-1"]
    assert [(t["org"], t["requester"]) for t in mine] == [("clientco", "alice@client.example")] * 2
    assert_reveals_nothing_to(desk, "alice@client.example", about="PD-1")


def test_a_client_citing_another_orgs_acknowledgement_gets_a_ticket_of_their_own(make_desk):
    """The same with our own signed Message-ID (org B's acknowledgement, forwarded to A)."""
    desk = new_desk(make_desk)
    open_ticket(desk, sender="bob@clientb.example", subject="Invoice export fails")
    [b_ack] = desk.acks()
    b_before = desk.ticket("PD-1")
    desk.send(make_email(sender="alice@client.example", subject=f"Re: {b_ack['subject']}",
                         body="Same here, site is down.", in_reply_to=b_ack["message_id"],
                         references=b_ack["message_id"]))
    desk.wait_settled()
    assert desk.ticket("PD-1") == b_before, "A's email landed on B's ticket"
    [a_ticket] = [t for t in desk.tickets() if t["ref"] != "PD-1"]
    assert a_ticket["org"] == "clientco"
    assert [p for p in desk.outbox(template="p1_page") if p["ticket"] == "PD-1"] == []


def assert_reveals_nothing_to(desk: Any, address: str, about: str) -> None:
    """Nothing sent to ``address`` names the other ticket."""
    for row in desk.outbox(to=address):
        assert row["ticket"] != about
        assert about not in text_of(desk, row["id"]), row


# --- the genuine paths still work ---------------------------------------------------------

def test_a_clients_reply_citing_the_acknowledgement_still_threads_onto_their_own_ticket(
        make_desk):
    desk = new_desk(make_desk)
    first = open_ticket(desk)
    [ack] = desk.acks()
    reply = make_email(subject=f"Re: {ack['subject']}", body="More detail: error 500.",
                       in_reply_to=ack["message_id"],
                       references=f"{first['Message-ID']} {ack['message_id']}")
    desk.send(reply)
    desk.wait_settled()
    [ticket] = desk.tickets()
    messages = desk.ticket(ticket["ref"])["messages"]
    assert messages[-1]["message_id"] == reply["Message-ID"]
    assert quarantine_reasons(desk) == []


def reply_address(desk: Any, note: dict[str, Any]) -> str:
    sent = email.message_from_bytes(desk.outbox_raw(note["id"]), policy=policy.default)
    return str(sent["Reply-To"].addresses[0].addr_spec)


def test_a_genuine_staff_reply_to_the_notification_still_runs_commands(make_desk):
    desk = new_desk(make_desk)
    open_ticket(desk)
    [note] = desk.outbox(template="staff_notification")
    token = reply_address(desk, note)
    assert "+" in token
    reply = make_email(sender=STAFF, to=token, subject=f"Re: {note['subject']}",
                       body="#priority P1\n#cc carol@client.example\n#time 30m\n"
                            "Fixed, please check.",
                       in_reply_to=note["message_id"], references=note["message_id"])
    desk.send(reply, mail_from=STAFF, rcpt=[token])
    desk.wait_settled()
    [ticket] = desk.tickets()
    assert ticket["priority"] == "P1"
    assert ticket["cc"] == ["carol@client.example"]
    assert len(desk.outbox(template="staff_reply")) == 1
    assert desk.outbox(template=NOTICE) == []
    assert snapshot(desk)["time_logged"] == 30 * 60


def test_with_staff_require_dkim_only_a_signed_staff_reply_runs_commands(make_desk):
    import dkim

    keys = Path(__file__).parent / "fixtures" / "dkim"

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        if name == b"test._domainkey.agency.example.":
            return b"v=DKIM1; k=rsa; p=" + (keys / "client.example.pub.b64").read_bytes().strip()
        return None

    desk = new_desk(make_desk, "staff_require_dkim = true")
    desk.app.dkim_dns = dns
    open_ticket(desk)
    [note] = desk.outbox(template="staff_notification")
    unsigned = make_email(sender=STAFF, subject=f"Re: {note['subject']}",
                          body="#priority P1\nOn it.", in_reply_to=note["message_id"])
    desk.send(unsigned, mail_from=STAFF)
    desk.wait_settled()
    assert desk.tickets()[0]["priority"] == "P3"
    assert quarantine_reasons(desk) == ["unauthenticated"]

    signed = make_email(sender=STAFF, subject=f"Re: {note['subject']}",
                        body="#priority P1\nOn it now.", in_reply_to=note["message_id"])
    raw = signed.as_bytes(policy=policy.SMTP)
    raw = dkim.sign(raw, b"test", b"agency.example", (keys / "client.example.key").read_bytes(),
                    include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw
    desk.send(raw, mail_from=STAFF)
    desk.wait_settled()
    assert desk.tickets()[0]["priority"] == "P1"
    assert len(desk.outbox(template="staff_reply")) == 1
    assert_staff_told_once(desk, about=f"Re: {note['subject']}")   # of the unsigned one


def test_a_staff_email_naming_no_ticket_is_quarantined_no_ticket_and_its_author_told(
        make_desk):
    desk = new_desk(make_desk)
    desk.send(make_email(sender=STAFF, subject="Note to self", body="call the bank"),
              mail_from=STAFF)
    desk.wait_settled()
    assert desk.tickets() == []
    assert quarantine_reasons(desk) == ["no_ticket"]
    assert_staff_told_once(desk, about="Note to self")


# --- 4. release is not a pardon -----------------------------------------------------------

def test_releasing_a_forged_staff_reply_never_runs_its_commands(make_desk):
    desk = new_desk(make_desk, "staff_require_dkim = true")
    open_ticket(desk)
    [note] = desk.outbox(template="staff_notification")
    forged = make_email(sender=STAFF, subject=f"Re: {note['subject']}",
                        body=f"#cc {ATTACKER}\n" + STAFF_COMMANDS,
                        in_reply_to=note["message_id"], references=note["message_id"])
    desk.send(forged, mail_from=STAFF)          # exact envelope, but no DKIM signature
    desk.wait_settled()
    [quarantined] = [r for r in desk.raws() if r["status"] == "quarantined"]
    assert quarantined["reason"] == "unauthenticated"
    before = desk.ticket("PD-1")

    outcome = release(desk.app.services, desk.app.dispatch, quarantined["id"], org="clientco")
    desk.wait_settled()

    after = desk.ticket("PD-1")
    unchanged = ("status", "priority", "assignee", "cc", "first_responded_at", "resolved_at")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}, (
        "the released forgery ran its commands")
    assert snapshot(desk)["time_logged"] == 0
    assert desk.outbox(template="staff_reply") == [], "the released forgery was relayed"
    assert desk.outbox(to=ATTACKER) == []
    assert outcome.startswith(f"released message {quarantined['id']}: processed"), outcome
    assert "staff" not in outcome, outcome


def test_quarantine_release_help_says_it_never_grants_staff_authority(capsys):
    from postdesk.cli import main

    with pytest.raises(SystemExit) as done:
        main(["quarantine", "release", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).lower()
    assert "never" in text and "command" in text, text


# --- 7. portable limits on stored fields --------------------------------------------------

def test_a_300_character_display_name_has_the_same_outcome_on_every_database(make_desk):
    desk = new_desk(make_desk)
    msg = make_email(sender="alice@client.example", subject="S" * 1200)
    del msg["From"]
    msg["From"] = f"{'A' * 300} <alice@client.example>"
    part = make_email().get_content()
    msg.add_attachment(part.encode(), maintype="application", subtype="x-" + "y" * 300,
                       filename="f" * 400 + ".txt")
    desk.send(msg, mail_from="alice@client.example")
    desk.wait_settled()
    [raw] = desk.raws()
    assert raw["status"] == "processed", raw
    [ticket] = desk.tickets()
    [message] = desk.ticket(ticket["ref"])["messages"][:1]
    assert message["attachments"][0]["filename"].startswith("fff")
    [ack] = desk.acks()
    assert len(ack["subject"]) <= 250


# --- 5. templates render in a sandbox -----------------------------------------------------

@pytest.mark.parametrize("payload", ["{{ ''.__class__.__mro__ }}",
                                     "{{ cycler.__init__.__globals__ }}"])
def test_an_override_that_reaches_for_python_internals_renders_nothing_of_them(
        make_desk, payload):
    desk = new_desk(make_desk)
    overrides = Path(desk.config.desk.data_dir) / "templates"
    (overrides / "orgs" / "clientco").mkdir(parents=True)
    (overrides / "orgs" / "clientco" / "acknowledgement.txt").write_text(payload)
    desk.send(make_email(sender="alice@client.example", subject="Printer on fire"),
              mail_from="alice@client.example")
    desk.wait_settled()
    [ack] = desk.acks()
    text = text_of(desk, ack["id"])
    assert "Thank you" in text or "PD-1" in text      # the built-in acknowledgement
    assert "object" not in text and "__" not in text and "function" not in text
    from postdesk.mail.render import check_overrides
    problems = check_overrides(overrides)
    assert problems and all("acknowledgement.txt" in p for p in problems)
    assert any("sandbox violation" in p for p in problems)


@pytest.mark.backends("sqlite")
def test_an_override_of_a_built_in_partial_is_sandboxed_too(tmp_path: Path) -> None:
    """The built-in templates render without the sandbox (they are the package's own
    code); an operator's file that a built-in template would include, or that replaces
    one, is rendered in the sandbox all the same: it never reaches the plain environment."""
    from jinja2.exceptions import SecurityError

    from postdesk.mail.render import Renderer
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / "_footer.txt").write_text("{{ cycler.__init__.__globals__ }}")
    (overrides / "acknowledgement.txt").write_text(
        "Thanks {{ ''.__class__.__mro__ }}\n{% include '_footer.txt' %}")
    renderer = Renderer(overrides)
    assert renderer.override_env is not None
    with pytest.raises(SecurityError):
        renderer.override_env.get_template("_footer.txt").render()
    with pytest.raises(SecurityError):
        renderer.override_env.get_template("acknowledgement.txt").render()
    # Without an override of its own, the built-in acknowledgement is rendered, and it
    # includes the built-in footer, never the operator's file of the same name.
    (overrides / "acknowledgement.txt").unlink()
    ticket = {"subject": "Printer", "priority": "P3", "status": "new"}
    text = renderer.render("acknowledgement", {
        "desk": {"name": "Desk"}, "ticket": ticket, "ref": "PD-1", "requester_name": "Al",
        "first_response_due": None}).text
    assert "Your request has been logged as PD-1" in text
    assert "__" not in text and "function" not in text and "cycler" not in text


def test_config_check_names_a_broken_template_override(tmp_path: Path, capsys) -> None:
    from postdesk.cli import main
    from tests.support import Backend, config_text

    data = tmp_path / "data"
    overrides = data / "templates" / "orgs" / "clientco"
    overrides.mkdir(parents=True)
    (overrides / "acknowledgement.txt").write_text("{{ cycler.__init__.__globals__ }}")
    config = tmp_path / "postdesk.toml"
    be = Backend("sqlite", f"sqlite:///{tmp_path / 'pd.db'}", "stub://", "cfg")
    config.write_text(config_text(be, data))
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(overrides / "acknowledgement.txt") in err and "sandbox violation" in err
    (overrides / "acknowledgement.txt").write_text("Thanks, {{ requester_name }}: {{ ref }}")
    assert main(["config", "check", "--config", str(config)]) == 0
