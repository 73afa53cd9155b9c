"""Support-hour allowance of an org (database side) and the ``balance`` email request.
The month arithmetic (rollover, cap, overuse) is the pure ``workflow.allowance``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import Org, Ticket, TimeEntry
from postdesk.workflow.desk.events import ticket_ref
from postdesk.workflow.pipeline.runner import Handled, step
from postdesk.workflow.rules.allowance import MonthBalance, month_balances, month_of
from postdesk.workflow.rules.config import Config

if TYPE_CHECKING:
    from postdesk.workflow.pipeline.process import Inbound


def org_timezone(config: Config, org_slug: str, plan: str) -> ZoneInfo:
    org_cfg = config.org(org_slug)
    if org_cfg and org_cfg.timezone:
        return ZoneInfo(org_cfg.timezone)
    return ZoneInfo(config.calendars[config.plans[plan].calendar].timezone)


def org_month_balance(session: Session, config: Config, org: Org, now: datetime
                      ) -> MonthBalance | None:
    """This month's balance for an org, or None when its plan has no allowance."""
    plan = config.plans[org.plan]
    if not plan.monthly_allowance:
        return None
    tz = org_timezone(config, org.slug, org.plan)
    rows = session.execute(
        select(TimeEntry.year, TimeEntry.month, func.sum(TimeEntry.seconds))
        .where(TimeEntry.org_id == org.id).group_by(TimeEntry.year, TimeEntry.month)).all()
    usage = {(y, m): timedelta(seconds=int(s)) for y, m, s in rows}
    current = month_of(now, tz)
    # The allowance accrues from the org's first ticket (or first logged time).
    first_ticket = session.scalar(select(func.min(Ticket.created_at)).where(
        Ticket.org_id == org.id))
    starts = [*usage, current] + ([month_of(first_ticket, tz)] if first_ticket else [])
    first = min(starts)
    cap = plan.rollover_cap.as_timedelta() if plan.rollover_cap is not None else None
    balances = month_balances(monthly_allowance=plan.monthly_allowance.as_timedelta(),
                              rollover_cap=cap, usage_by_month=usage, first_month=first,
                              through_month=current)
    return balances[-1]


def per_ticket_usage(session: Session, org: Org, year: int, month: int
                     ) -> list[tuple[Ticket, timedelta]]:
    rows = session.execute(
        select(TimeEntry.ticket_id, func.sum(TimeEntry.seconds))
        .where(TimeEntry.org_id == org.id, TimeEntry.year == year, TimeEntry.month == month)
        .group_by(TimeEntry.ticket_id).order_by(TimeEntry.ticket_id)).all()
    return [(session.get(Ticket, tid), timedelta(seconds=int(seconds))) for tid, seconds in rows]


def hours(value: timedelta) -> str:
    """``5h 30m`` / ``-1h 15m``: how the balance email shows durations."""
    total = int(value.total_seconds() // 60)
    sign = "-" if total < 0 else ""
    h, m = divmod(abs(total), 60)
    return f"{sign}{h}h {m:02d}m"


@step
def balance_request(ctx: Inbound) -> None:
    """A client contact who emails the subject ``balance`` gets this month's allowance,
    used, rollover and remaining, per ticket; no ticket is made."""
    if ctx.sender is None or ctx.sender.kind != "contact" or ctx.org is None:
        return
    if (ctx.email.subject or "").strip().lower() not in ("balance", "re: balance"):
        return
    if ctx.auto_reply or not ctx.raw.notify:
        raise Handled("balance_request", "automatic or imported: not answered")
    balance = org_month_balance(ctx.session, ctx.config, ctx.org, ctx.now)
    usage = per_ticket_usage(ctx.session, ctx.org, balance.year, balance.month) \
        if balance else []
    prefix = ctx.config.desk.ticket_prefix
    from postdesk.workflow.desk.outbox import queue_email

    row = queue_email(
        ctx.session, ctx.app, dedupe_key=f"balance:{ctx.raw.id}", template="balance",
        to=[ctx.sender.email], subject=f"Support balance for {ctx.org.name}",
        in_reply_to=ctx.email.message_id, references=[*ctx.email.references],
        context={"org_name": ctx.org.name, "balance": balance, "hours": hours,
                 "usage": [(ticket_ref(prefix, t.id), t.subject, used) for t, used in usage]},
        now=ctx.now)
    if row is not None:
        ctx.outbox_ids.append(row.id)
    raise Handled("balance_request")
