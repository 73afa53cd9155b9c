"""The declared pipeline (``workflow/pipeline/builtin.py``) is a contract: the order of
its steps, their names, and which outcomes the runner reacts to. A change here is a
change of what happens to every email, so it must be made on purpose, in both places."""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Iterator
from typing import get_args

from postdesk.workflow.pipeline import checks, client, notify, staff
from postdesk.workflow.pipeline.builtin import BUILTIN, CHECKS, HANDLERS, NOTIFY, REACTIONS
from postdesk.workflow.pipeline.runner import Duplicate, Handled, Outcome, Quarantine, Step
from postdesk.workflow.rules.trust import QuarantineReason

ALL_STEPS = [*CHECKS, *HANDLERS, *NOTIFY]


def names(steps: list[Step]) -> list[str]:  # type: ignore[type-arg]
    return [s.name for s in steps]


def test_the_checks_run_in_the_declared_order() -> None:
    assert names(CHECKS) == ["parse", "classify_mail", "identify", "authenticate_sender",
                             "deduplicate", "balance_request", "locate_ticket",
                             "decide_trust"]


def test_the_trust_decision_is_the_last_check_so_nothing_acts_before_it() -> None:
    assert CHECKS[-1].name == "decide_trust"
    assert names(CHECKS).index("locate_ticket") < names(CHECKS).index("decide_trust")


def test_the_handlers_run_in_the_declared_order() -> None:
    assert names(HANDLERS) == ["staff_mail", "record", "prioritise", "assign",
                               "start_or_resume_clocks", "sign_off", "flood_limit"]


def test_the_flood_limit_is_the_last_handler_so_its_lock_is_held_only_to_the_commit() -> None:
    assert HANDLERS[-1].name == "flood_limit"


def test_the_notify_steps_run_in_the_declared_order() -> None:
    assert names(NOTIFY) == ["acknowledge", "page_p1", "notify_staff",
                             "answer_signoff_refusal"]


def test_the_builtin_pipeline_is_the_three_declared_phases() -> None:
    assert list(BUILTIN.checks) == CHECKS
    assert list(BUILTIN.handlers) == HANDLERS
    assert list(BUILTIN.notify) == NOTIFY
    assert dict(BUILTIN.reactions) == REACTIONS


def test_every_step_is_a_distinct_step_named_after_its_function() -> None:
    assert all(isinstance(s, Step) for s in ALL_STEPS)
    assert len({s.name for s in ALL_STEPS}) == len(ALL_STEPS)
    assert len({id(s.run) for s in ALL_STEPS}) == len(ALL_STEPS)
    assert all(s.name == s.run.__name__ for s in ALL_STEPS)


def test_each_phase_takes_its_steps_from_its_own_modules() -> None:
    """Checks (read-only) live in ``checks``; only handlers record; only notify queues."""
    assert {s.run.__module__ for s in CHECKS} == {checks.__name__}
    assert {s.run.__module__ for s in HANDLERS} == {staff.__name__, client.__name__}
    assert {s.run.__module__ for s in NOTIFY} == {notify.__name__}


def test_the_staff_handler_comes_first_so_staff_mail_is_never_recorded_as_a_clients() -> None:
    assert HANDLERS[0].name == "staff_mail"


# --- reactions ---------------------------------------------------------------------------

OUTCOMES: dict[str, type[Outcome]] = {c.__name__: c for c in (Quarantine, Duplicate, Handled)}


# The one reason not written as a literal: the trust decision's quarantine, whose reason
# is the verdict's (``rules.trust.QuarantineReason``). Any other expression fails the reader.
VERDICT_REASONS: dict[tuple[str, str], tuple[str, ...]] = {
    (checks.__name__, "verdict.reason or 'unauthenticated'"): get_args(QuarantineReason),
}


def raised_outcomes(module: object) -> Iterator[tuple[str, str]]:
    """(status, reason) of every ``raise Quarantine("reason", ...)`` (and Duplicate,
    Handled) written in a module."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
            continue
        func = node.exc.func
        if isinstance(func, ast.Name) and func.id in OUTCOMES:
            first = node.exc.args[0] if node.exc.args else None
            if first is not None and not isinstance(first, ast.Constant):
                key = (module.__name__, ast.unparse(first))  # type: ignore[attr-defined]
                assert key in VERDICT_REASONS, (
                    f"{module}: an outcome's reason must be a literal name, not {key[1]}")
                for reason in VERDICT_REASONS[key]:
                    yield OUTCOMES[func.id].status, reason
                continue
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{module}: an outcome's reason must be a literal name")
            yield OUTCOMES[func.id].status, first.value


def step_modules() -> set[object]:
    return {sys.modules[s.run.__module__] for s in ALL_STEPS}


def test_the_steps_raise_outcomes_we_can_read() -> None:
    raised = {pair for m in step_modules() for pair in raised_outcomes(m)}
    assert ("quarantined", "unknown_sender") in raised       # the reader works
    assert ("duplicate", "message_id") in raised
    assert ("quarantined", "unauthenticated") in raised        # the trust verdict's reasons
    assert ("quarantined", "no_ticket") in raised
    assert ("quarantined", "flood") in raised                  # flood_limit, a handler


def test_quarantined_staff_mail_tells_the_staff_member() -> None:
    assert REACTIONS[("quarantined", "unauthenticated")] is notify.tell_staff_member
    assert REACTIONS[("quarantined", "no_ticket")] is notify.tell_staff_member
    assert REACTIONS[("quarantined", "unknown_sender")] is notify.notice_unknown_sender


def test_the_reactions_table_names_only_outcomes_the_steps_can_raise() -> None:
    raised = {pair for m in step_modules() for pair in raised_outcomes(m)}
    assert set(REACTIONS) - raised == set()


def test_every_reaction_is_a_notify_function_taking_the_context_and_the_outcome() -> None:
    for key, reaction in REACTIONS.items():
        assert reaction.__module__ == notify.__name__, key
        assert list(inspect.signature(reaction).parameters) == ["ctx", "outcome"], key
