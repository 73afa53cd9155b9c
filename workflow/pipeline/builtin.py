"""THE inbound pipeline, declared: three phases of named steps, and the runner's
reactions to outcomes. This file is the one place to read (or change) what happens to an
email, in order. ``process`` runs it; ``tests/pipeline/test_builtin.py`` holds the order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from postdesk.workflow.pipeline import checks, client, notify, staff
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Outcome, Step

Reaction = Callable[[Inbound, Outcome], None]


@dataclass(frozen=True)
class Pipeline:
    checks: Sequence[Step[Inbound]]      # read-only: annotate, or end with an outcome
    handlers: Sequence[Step[Inbound]]    # one short write transaction: record
    notify: Sequence[Step[Inbound]]      # same transaction: queue drafts from the record
    reactions: Mapping[tuple[str, str], Reaction]   # (status, reason) -> what to do


CHECKS: list[Step[Inbound]] = [
    checks.parse,                  # bytes -> ParsedEmail, or quarantine "unparseable"
    checks.classify_mail,          # loops and bounces quarantined, auto-replies flagged
    checks.identify,               # staff / contact of an org / unknown sender
    checks.authenticate_sender,    # DKIM / trusted Authentication-Results, where it matters
    checks.deduplicate,            # the same Message-ID by another door
    checks.balance_request,        # "balance" from a client: answered, no ticket
    checks.locate_ticket,          # staff tokens; our ids, the client's ids, [PD-n]
    checks.decide_trust,           # THE trust verdict: what this email may do, or quarantine
]

HANDLERS: list[Step[Inbound]] = [
    staff.staff_mail,              # staff replies, commands, internal notes (ends here)
    client.record,                 # open a ticket or add the email to it
    client.prioritise,             # escalation keyword, keyword rules (raise only)
    client.assign,                 # rota
    client.start_or_resume_clocks, # SLA clocks, reopen, resume from pending
    client.sign_off,               # approvals while awaiting sign-off
    client.flood_limit,            # too many new tickets from one sender: undo, quarantine
]

NOTIFY: list[Step[Inbound]] = [
    notify.acknowledge,            # the client's acknowledgement
    notify.page_p1,                # P1 page to rota and leads
    notify.notify_staff,           # the assignee hears about client email
    notify.answer_signoff_refusal, # "only these people can sign off"
]

REACTIONS: dict[tuple[str, str], Reaction] = {
    ("quarantined", "unknown_sender"): notify.notice_unknown_sender,
    ("quarantined", "unauthenticated"): notify.tell_staff_member,
    ("quarantined", "no_ticket"): notify.tell_staff_member,
    ("quarantined", "bounce"): notify.bounce_bookkeeping,
    ("processed", "balance_request"): notify.answer_balance,
    ("processed", "command_errors"): notify.report_command_errors,
    ("processed", "relay_refused"): notify.report_relay_refused,
    ("processed", "queue_request"): notify.answer_queue,
    ("duplicate", "message_id"): notify.note_duplicate,
}

BUILTIN = Pipeline(checks=CHECKS, handlers=HANDLERS, notify=NOTIFY, reactions=REACTIONS)
