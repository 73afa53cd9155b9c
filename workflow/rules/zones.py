"""The one rule for which time zone a date belongs to.

* An org's zone (``org_zone``): the org's own ``timezone`` when set, else the zone of its
  plan's calendar. It decides an org's allowance months, the month ``#time`` is booked
  in, its statements and the local times its contacts are shown.
* The desk's zone (``desk_zone``): ``[digest] timezone`` (default UTC). It decides the
  agency's own dates: rota weeks and digest periods.
* A staff member's zone (``staff_zone``): their ``staff[].timezone``, else the desk's. The
  due times in their notifications and queue are shown in it.

Every caller asks here; nothing else picks a zone."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from postdesk.workflow.rules.config import Config


def org_zone(config: Config, org_slug: str, plan: str | None = None) -> ZoneInfo:
    org = config.org(org_slug)
    if org is not None and org.timezone:
        return ZoneInfo(org.timezone)
    plan_name = plan or (org.plan if org is not None else None)
    if plan_name is None or plan_name not in config.plans:
        return desk_zone(config)
    return ZoneInfo(config.calendars[config.plans[plan_name].calendar].timezone)


def desk_zone(config: Config) -> ZoneInfo:
    return ZoneInfo(config.digest.timezone)


def staff_zone(config: Config, email: str) -> ZoneInfo:
    member = config.staff_member(email)
    if member is not None and member.timezone:
        return ZoneInfo(member.timezone)
    return desk_zone(config)
