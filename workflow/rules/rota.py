"""The weekly support rota: one staff member per week, cycling from a Monday. Pure."""

from __future__ import annotations

from datetime import date

from postdesk.workflow.rules.config import RotaConfig


def on_rota(rota: RotaConfig | None, day: date) -> str | None:
    """The staff email on rota in the week containing ``day`` (weeks before ``start``
    cycle backwards, so the rota is defined for every date)."""
    if rota is None or not rota.weeks:
        return None
    week = (day - rota.start).days // 7
    return rota.weeks[week % len(rota.weeks)]
