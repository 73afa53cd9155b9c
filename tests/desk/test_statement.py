"""The monthly client statement of Base Co for November 2026, computed by hand.

Base Co (tests/support.py) is on Base: 2h a month, rollover capped at 4h, office hours
Mon-Fri 08:00-18:00 Europe/London (GMT in November); first response P2 8h, P3 10h.

Its first ticket was in September, so the allowance runs from September:
  September: 2h, used 30m        -> 1h 30m rolls over
  October:   2h + 1h 30m, used 0 -> 3h 30m rolls over (under the 4h cap)
  November:  2h + 3h 30m = 5h 30m available, used 1h 15m + 4h + 45m = 6h -> 30m over,
             carried into December as -30m."""

from __future__ import annotations

import csv
import email
import io
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy

import pytest
from sqlalchemy.orm import Session

from postdesk.storage.directory import org_by_slug, staff_by_email
from postdesk.storage.models import Outbox, Ticket, TimeEntry
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.statement import build_statement, due_statements
from postdesk.workflow.rules.clock import ManualClock
from postdesk.workflow.rules.report import GOOD_COLOUR, POOR_COLOUR
from tests.desk.doubles import RecordedDispatch
from tests.support import BASECO

STATEMENT_DESK = BASECO.replace('escalation_keyword = "BASECO-999"',
                                'escalation_keyword = "BASECO-999"\nstatement = true\n'
                                'statement_to = ["Accounts@base.example"]')
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def config_extra() -> str:
    return STATEMENT_DESK


def at(month: int, day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, month, day, hh, mm, tzinfo=UTC)


@pytest.fixture
def base_co(session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> Session:
    keeper = services.clocks(session)
    dev1 = staff_by_email(session, "dev1@agency.example")
    org = org_by_slug(session, "baseco")
    assert dev1 is not None and org is not None

    def ticket(priority: str, created: datetime, subject: str, **columns: object) -> Ticket:
        values: dict[str, object] = {"status": "open", **columns}
        t = new_ticket("baseco", requester="bob@base.example", subject=subject,
                       priority=priority, created_at=created, updated_at=created, **values)
        keeper.start_ticket(t, created)
        session.flush()
        return t

    def log(t: Ticket, month: int, minutes: int) -> None:
        session.add(TimeEntry(ticket_id=t.id, org_id=org.id, staff_id=dev1.id,
                              seconds=minutes * 60, year=2026, month=month,
                              logged_at=at(month, 5, 12)))

    def answer(t: Ticket, when: datetime) -> None:
        for clock in keeper.running(t, "first_response"):
            clock.stopped_at = when

    old = ticket("P3", at(9, 10, 9), "Migrate the old site")           # PD-1
    answer(old, at(9, 10, 10))
    log(old, 9, 30)
    log(old, 11, 75)
    october = ticket("P3", at(10, 20, 9), "Renew the certificate",     # PD-2
                     resolved_at=at(11, 4, 10), status="resolved")
    answer(october, at(10, 20, 10))
    quick = ticket("P2", at(11, 2, 9), "Login emails late",            # PD-3: met, 3h
                   resolved_at=at(11, 3, 15), status="resolved")
    answer(quick, at(11, 2, 12))
    log(quick, 11, 240)
    slow = ticket("P3", at(11, 16, 10), "New logo on the home page")   # PD-4: missed, 11h30m
    answer(slow, at(11, 17, 11, 30))
    log(slow, 11, 45)
    session.flush()
    return session


def test_the_november_statement_matches_the_hand_computation(base_co: Session,
                                                             services: Services):
    org = org_by_slug(base_co, "baseco")
    assert org is not None
    s = build_statement(base_co, services, org, 2026, 11, NOW)
    assert (s.month, s.month_name, s.timezone) == ("2026-11", "November 2026", "Europe/London")
    assert (s.opened, s.resolved) == (2, 2)          # PD-3, PD-4 opened; PD-2, PD-3 resolved
    assert [(t["ticket"], t["minutes"], t["hours"], t["resolved"]) for t in s.tickets] == [
        ("PD-1", 75, "1.25", ""), ("PD-2", 0, "0.00", "2026-11-04"),
        ("PD-3", 240, "4.00", "2026-11-03"), ("PD-4", 45, "0.75", "")]
    assert (s.total_time, s.total_seconds) == ("6h 00m", 6 * 3600)
    a = s.allowance
    assert a is not None
    assert (a["allowance"], a["rollover_in"], a["available"], a["used"], a["remaining"],
            a["rollover_out"], a["overuse_carried"], a["over"]) == (
        "2h 00m", "3h 30m", "5h 30m", "6h 00m", "-0h 30m", "-0h 30m", "0h 30m", True)
    assert a["bar"] == {"filled": 200, "empty": 0, "colour": POOR_COLOUR}
    rows = {c["priority"]: c for c in s.compliance}
    assert [(t["met"], t["total"], t["percent"], t["bar"]["colour"])
            for t in rows["P2"]["targets"]] == [(1, 1, 100.0, GOOD_COLOUR)]
    assert [(t["met"], t["total"], t["percent"]) for t in rows["P3"]["targets"]] == [
        (0, 1, 0.0)]
    # PD-4: Mon 16 10:00 -> Tue 17 11:30 = 8h + 3h 30m of office hours.
    assert (rows["P2"]["median_first_response"], rows["P3"]["median_first_response"]) == (
        "3h 00m", "11h 30m")


def test_the_statement_is_sent_once_on_the_first_open_day_with_the_csv(
        base_co: Session, services: Services, clock: ManualClock):
    dispatch = RecordedDispatch()
    clock.set(at(12, 1, 7, 59))          # Tue 1 Dec, before the office opens
    assert due_statements(services, dispatch) == []
    clock.set(at(12, 1, 8, 0))
    [outbox_id] = due_statements(services, dispatch)
    clock.set(at(12, 2, 9, 0))
    assert due_statements(services, dispatch) == []   # once a month
    row = base_co.get_one(Outbox, outbox_id)
    base_co.refresh(row)
    assert row.to == ["accounts@base.example"] and row.template == "statement"
    assert row.subject == "Acme Digital Support: support statement for Base Co, November 2026"
    assert row.raw is not None
    msg = email.message_from_bytes(row.raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    for line in ["Tickets opened: 2", "Tickets resolved: 2",
                 "  Rolled over from before:  3h 30m", "  Used this month:          6h 00m",
                 "  Remaining:                -0h 30m (over the allowance)",
                 "  Carried into next month:  -0h 30m",
                 "  P3  median first response 11h 30m (business hours)",
                 "    First response  0 of 1 met  0.0%", "  Total: 6h 00m"]:
        assert line + "\n" in text, line
    html = msg.get_body(("html",)).get_content()
    assert "Used 6h 00m of 5h 30m" in html and f'bgcolor="{POOR_COLOUR}"' in html
    assert "<script" not in html.lower() and "http" not in html.lower()
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "statement-baseco-2026-11.csv"
    rows = list(csv.DictReader(io.StringIO(attachment.get_content())))
    assert [r["ticket"] for r in rows] == ["PD-1", "PD-2", "PD-3", "PD-4"]
    assert sum(int(r["minutes"]) for r in rows) == 360
    assert round(sum(float(r["hours"]) for r in rows), 2) == 6.0


def test_only_orgs_that_opted_in_get_a_statement(base_co: Session, services: Services,
                                            clock: ManualClock):
    clock.set(NOW)
    dispatch = RecordedDispatch()
    ids = due_statements(services, dispatch)
    assert [base_co.get_one(Outbox, i).to for i in ids] == [["accounts@base.example"]]
