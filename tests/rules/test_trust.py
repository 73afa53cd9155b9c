"""The trust decision, rule by rule, then every row of TRUST_TABLE, then properties that
must hold for any evidence at all."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postdesk.workflow.rules.senders import SenderIdentity
from postdesk.workflow.rules.trust import (
    TRUST_TABLE,
    DkimCase,
    EnvelopeCase,
    Evidence,
    SenderCase,
    TicketRef,
    TokenCase,
    TrustRow,
    Verdict,
    decide,
    exact_envelope,
    trust_table_markdown,
)

DEV1 = SenderIdentity(kind="staff", email="dev1@agency.example", staff_role="agent",
                      name="Dev One")
ALICE = SenderIdentity(kind="contact", email="alice@client.example", org_slug="clientco")
BOB = SenderIdentity(kind="contact", email="bob@clientb.example", org_slug="orgb")
MALLORY = SenderIdentity(kind="unknown", email="mallory@elsewhere.example")

# Tickets the references below point at.
ALICE_TICKET = TicketRef(1, "clientco", frozenset({"alice@client.example"}), "our_message_id")
BOB_TICKET = TicketRef(2, "orgb", frozenset({"bob@clientb.example"}), "client_message_id")
BOB_TICKET_BY_SUBJECT = dataclasses.replace(BOB_TICKET, how="subject")
BOB_TICKET_WITH_ALICE_CC = TicketRef(3, "orgb",
                                     frozenset({"bob@clientb.example", "alice@client.example"}),
                                     "subject")


def evidence(sender: SenderIdentity = DEV1, **kw: Any) -> Evidence:
    """Evidence of a plain email from ``sender``: its own address as envelope, no token,
    no reference, DKIM not checked, every switch off. Tests change what they are about."""
    base: dict[str, Any] = dict(
        sender=sender, envelope_from=sender.email, staff_token_ticket=None, client_refs=(),
        dkim=None, staff_require_dkim=False, org_require_dkim=False,
        staff_unverified_on_behalf=False, released=False, released_to_org=None,
        asks_on_behalf=False, asks_read_only=False)
    base.update(kw)
    return Evidence(**base)


def staff_reply(**kw: Any) -> Evidence:
    return evidence(DEV1, staff_token_ticket=1, **kw)


# --- staff authority ----------------------------------------------------------------------

def test_a_staff_reply_with_a_staff_token_and_the_exact_envelope_is_a_staff_reply() -> None:
    verdict = decide(staff_reply())
    assert verdict == Verdict("staff_reply", ticket_id=1)
    assert verdict.staff_authority


def test_the_envelope_is_compared_whole_and_without_regard_to_case() -> None:
    assert decide(staff_reply(envelope_from="<DEV1@Agency.EXAMPLE>")).kind == "staff_reply"
    assert exact_envelope("dev1@agency.example", " Dev1@agency.example ")
    assert not exact_envelope("dev1@agency.example", "dev1+x@agency.example")


def test_a_staff_from_with_a_foreign_envelope_is_quarantined_unauthenticated() -> None:
    verdict = decide(staff_reply(envelope_from="attacker@evil.example"))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")
    assert "attacker@evil.example" in verdict.detail


def test_an_envelope_at_the_staff_domain_but_another_address_is_not_enough() -> None:
    verdict = decide(staff_reply(envelope_from="nobody@agency.example", dkim=True))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_a_null_envelope_never_carries_staff_authority() -> None:
    for envelope in ("", "<>", "  "):
        verdict = decide(staff_reply(envelope_from=envelope, dkim=True))
        assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")
        assert "null sender" in verdict.detail


def test_with_staff_require_dkim_a_staff_reply_without_a_pass_is_unauthenticated() -> None:
    for dkim in (False, None):
        verdict = decide(staff_reply(staff_require_dkim=True, dkim=dkim))
        assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")
        assert "DKIM" in verdict.detail


def test_with_staff_require_dkim_a_dkim_pass_allows_the_staff_reply() -> None:
    assert decide(staff_reply(staff_require_dkim=True, dkim=True)).kind == "staff_reply"


def test_without_staff_require_dkim_a_staff_reply_does_not_need_dkim() -> None:
    for dkim in (True, False, None):
        assert decide(staff_reply(dkim=dkim)).kind == "staff_reply"


def test_an_acknowledgement_message_id_never_carries_staff_authority() -> None:
    """Attack 2: the client got our acknowledgement; its Message-ID is client-visible."""
    verdict = decide(evidence(DEV1, client_refs=(ALICE_TICKET,), dkim=True))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")
    assert "staff notification" in verdict.detail


def test_a_subject_token_never_carries_staff_authority() -> None:
    ref = dataclasses.replace(ALICE_TICKET, how="subject")
    verdict = decide(evidence(DEV1, client_refs=(ref,), dkim=True))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_an_on_behalf_request_with_a_dkim_pass_is_a_staff_action() -> None:
    verdict = decide(evidence(DEV1, asks_on_behalf=True, dkim=True))
    assert verdict == Verdict("staff_action", action="on_behalf")


def test_an_on_behalf_request_without_dkim_is_unauthenticated_by_default() -> None:
    verdict = decide(evidence(DEV1, asks_on_behalf=True, dkim=None))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_an_unverifiable_on_behalf_request_passes_only_when_the_operator_allows_it() -> None:
    allowed = decide(evidence(DEV1, asks_on_behalf=True, dkim=None,
                              staff_unverified_on_behalf=True))
    assert allowed == Verdict("staff_action", action="on_behalf")


def test_staff_unverified_on_behalf_does_not_excuse_a_dkim_failure() -> None:
    verdict = decide(evidence(DEV1, asks_on_behalf=True, dkim=False,
                              staff_unverified_on_behalf=True))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_staff_require_dkim_wins_over_staff_unverified_on_behalf() -> None:
    verdict = decide(evidence(DEV1, asks_on_behalf=True, dkim=None, staff_require_dkim=True,
                              staff_unverified_on_behalf=True))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_a_forged_on_behalf_request_is_quarantined_unauthenticated() -> None:
    """Attack 1: staff From, envelope attacker@evil.example, #org/#requester/#cc lines."""
    for require in (False, True):
        verdict = decide(evidence(DEV1, envelope_from="attacker@evil.example",
                                  asks_on_behalf=True, dkim=None, staff_require_dkim=require,
                                  staff_unverified_on_behalf=True))
        assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")
        assert verdict.notify_staff == "dev1@agency.example"


def test_a_staff_token_wins_over_on_behalf_lines() -> None:
    assert decide(staff_reply(asks_on_behalf=True)).kind == "staff_reply"


def test_a_read_only_request_with_the_exact_envelope_is_a_staff_action() -> None:
    verdict = decide(evidence(DEV1, asks_read_only=True))
    assert verdict == Verdict("staff_action", action="read_only")


def test_a_read_only_request_needs_the_exact_envelope_and_dkim_where_required() -> None:
    forged = decide(evidence(DEV1, asks_read_only=True, envelope_from="nobody@agency.example"))
    unsigned = decide(evidence(DEV1, asks_read_only=True, staff_require_dkim=True))
    assert forged.reason == unsigned.reason == "unauthenticated"


def test_genuine_staff_mail_naming_no_ticket_and_asking_nothing_is_no_ticket() -> None:
    verdict = decide(evidence(DEV1))
    assert (verdict.kind, verdict.reason) == ("quarantine", "no_ticket")


def test_forged_staff_mail_naming_nothing_is_unauthenticated_not_no_ticket() -> None:
    verdict = decide(evidence(DEV1, envelope_from="attacker@evil.example"))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_quarantined_staff_mail_tells_the_configured_staff_address_never_the_envelope() -> None:
    cases = [evidence(DEV1), evidence(DEV1, envelope_from="attacker@evil.example"),
             staff_reply(envelope_from="attacker@evil.example"),
             evidence(DEV1, client_refs=(ALICE_TICKET,))]
    for case in cases:
        verdict = decide(case)
        assert verdict.kind == "quarantine"
        assert verdict.notify_staff == "dev1@agency.example"


def test_quarantined_client_mail_tells_no_staff_member() -> None:
    assert decide(evidence(MALLORY)).notify_staff is None
    assert decide(evidence(ALICE, org_require_dkim=True)).notify_staff is None


# --- client content -----------------------------------------------------------------------

def test_a_client_reference_to_a_ticket_of_the_senders_own_org_is_client_content() -> None:
    verdict = decide(evidence(ALICE, client_refs=(ALICE_TICKET,)))
    assert verdict == Verdict("client_content", ticket_id=1, org_slug="clientco",
                              matched_by="our_message_id")
    assert not verdict.staff_authority


def test_a_client_reference_to_a_ticket_the_sender_is_on_is_client_content() -> None:
    verdict = decide(evidence(ALICE, client_refs=(BOB_TICKET_WITH_ALICE_CC,)))
    assert (verdict.kind, verdict.ticket_id, verdict.org_slug) == ("client_content", 3, "orgb")


def test_a_reference_to_another_orgs_ticket_is_ignored_and_opens_a_ticket_for_the_senders_org(
) -> None:
    """Attack 3: org A cites org B's client Message-ID, then org B's [PD-n]."""
    for ref in (BOB_TICKET, BOB_TICKET_BY_SUBJECT):
        verdict = decide(evidence(ALICE, client_refs=(ref,)))
        assert verdict == Verdict("new_ticket", org_slug="clientco")
        assert "orgb" not in verdict.detail and verdict.ticket_id is None


def test_the_first_admissible_reference_wins_and_foreign_ones_are_skipped() -> None:
    verdict = decide(evidence(ALICE, client_refs=(BOB_TICKET, ALICE_TICKET)))
    assert verdict.ticket_id == 1


def test_participants_are_compared_without_regard_to_case() -> None:
    shouty = SenderIdentity(kind="contact", email="ALICE@Client.Example", org_slug="clientco")
    verdict = decide(evidence(shouty, client_refs=(BOB_TICKET_WITH_ALICE_CC,)))
    assert verdict.ticket_id == 3


def test_a_staff_token_in_a_clients_email_gives_the_client_nothing() -> None:
    verdict = decide(evidence(ALICE, staff_token_ticket=1))
    assert verdict == Verdict("new_ticket", org_slug="clientco")


def test_a_clients_on_behalf_and_queue_lines_are_only_text() -> None:
    assert decide(evidence(ALICE, asks_on_behalf=True, asks_read_only=True, dkim=True)) == \
        Verdict("new_ticket", org_slug="clientco")


def test_a_contact_of_an_org_requiring_dkim_without_a_pass_is_quarantined_unauthenticated(
) -> None:
    for dkim in (False, None):
        verdict = decide(evidence(ALICE, org_require_dkim=True, dkim=dkim,
                                  client_refs=(ALICE_TICKET,)))
        assert (verdict.kind, verdict.reason) == ("quarantine", "unauthenticated")


def test_a_contact_of_an_org_requiring_dkim_with_a_pass_is_handled_as_a_client() -> None:
    verdict = decide(evidence(ALICE, org_require_dkim=True, dkim=True,
                              client_refs=(ALICE_TICKET,)))
    assert verdict.kind == "client_content"


def test_an_unknown_sender_is_quarantined_unknown_sender_whatever_it_carries() -> None:
    verdict = decide(evidence(MALLORY, staff_token_ticket=1, client_refs=(ALICE_TICKET,),
                              asks_on_behalf=True, dkim=True))
    assert (verdict.kind, verdict.reason) == ("quarantine", "unknown_sender")


# --- release ------------------------------------------------------------------------------

def test_a_released_staff_email_is_never_staff_authority() -> None:
    verdict = decide(staff_reply(released=True, released_to_org="clientco", dkim=True))
    assert verdict == Verdict("new_ticket", org_slug="clientco")
    assert not decide(evidence(DEV1, released=True, released_to_org="clientco",
                               asks_on_behalf=True, dkim=True)).staff_authority


def test_a_released_email_is_client_content_on_a_ticket_of_the_release_org_only() -> None:
    on_release_org = decide(evidence(DEV1, released=True, released_to_org="clientco",
                                     client_refs=(BOB_TICKET, ALICE_TICKET)))
    assert (on_release_org.kind, on_release_org.ticket_id) == ("client_content", 1)
    foreign = decide(evidence(MALLORY, released=True, released_to_org="clientco",
                              client_refs=(BOB_TICKET,)))
    assert foreign == Verdict("new_ticket", org_slug="clientco")


def test_a_released_email_is_not_checked_against_dkim_again() -> None:
    verdict = decide(evidence(ALICE, released=True, released_to_org="clientco",
                              org_require_dkim=True, dkim=False))
    assert verdict == Verdict("new_ticket", org_slug="clientco")


def test_a_released_contact_without_an_org_goes_to_its_own_org() -> None:
    verdict = decide(evidence(BOB, released=True, released_to_org=None))
    assert verdict == Verdict("new_ticket", org_slug="orgb")


def test_a_released_email_with_no_org_to_file_it_under_stays_in_quarantine() -> None:
    for sender in (MALLORY, DEV1):
        verdict = decide(evidence(sender, released=True, staff_token_ticket=1))
        assert (verdict.kind, verdict.reason) == ("quarantine", "unknown_sender")
        assert verdict.notify_staff is None


def test_every_security_relevant_field_of_evidence_must_be_given() -> None:
    with pytest.raises(TypeError):
        Evidence(sender=DEV1)  # type: ignore[call-arg]


# --- the table ----------------------------------------------------------------------------

ORG_OF_CASE = {"staff": None, "contact": "clientco",
               "contact of an org with require_dkim": "clientco", "unknown": None,
               "released: staff From": "release", "released: contact": "release",
               "released: unknown sender": "release",
               "released without an org: contact": "clientco",
               "released without an org: unknown sender": None}


def _sender_fields(case: SenderCase) -> dict[str, Any]:
    identity = {"staff": DEV1, "contact": ALICE, "unknown": MALLORY}
    kind = ("staff" if "staff" in case else "unknown" if "unknown" in case else "contact")
    released = case.startswith("released")
    return {"sender": identity[kind], "released": released,
            "released_to_org": "release" if released and "without" not in case else None,
            "org_require_dkim": case == "contact of an org with require_dkim"
            or case == "released: contact"}


def _token_fields(case: TokenCase, sender: SenderIdentity, own_org: str | None
                  ) -> list[dict[str, Any]]:
    if case == "any":
        every = [c for c in get_args(TokenCase) if c != "any"]
        return [f for c in every for f in _token_fields(c, sender, own_org)]
    own = TicketRef(11, own_org or "clientco", frozenset({"someone@client.example"}),
                    "our_message_id")
    on = TicketRef(12, "orgb", frozenset({"bob@clientb.example", sender.email}), "subject")
    other = TicketRef(13, "orgb", frozenset({"bob@clientb.example"}), "client_message_id")
    return [{
        "staff token": {"staff_token_ticket": 7},
        "client token, ticket of the sender's org": {"client_refs": (own,)},
        "client token, ticket the sender is on": {"client_refs": (on,)},
        "client token, another org's ticket": {"client_refs": (other,)},
        "#org / #requester": {"asks_on_behalf": True},
        "read-only request": {"asks_read_only": True},
        "none": {},
    }[case]]


def _envelopes(case: EnvelopeCase, sender: SenderIdentity) -> list[str]:
    domain = sender.email.rsplit("@", 1)[1]
    concrete = {"exact": [sender.email.upper()], "same domain": [f"nobody@{domain}"],
                "foreign": ["attacker@evil.example"], "null": ["", "<>"]}
    if case == "not exact":
        return concrete["same domain"] + concrete["foreign"] + concrete["null"]
    if case == "any":
        return [e for values in concrete.values() for e in values]
    return concrete[case]


def _dkims(case: DkimCase) -> list[bool | None]:
    return {"pass": [True], "fail": [False], "unchecked": [None],
            "any": [True, False, None]}[case]


def cases_of(row: TrustRow) -> list[Evidence]:
    """Every concrete Evidence a table row stands for ("any" expanded)."""
    sender = _sender_fields(row.sender)
    own = ORG_OF_CASE[row.sender]
    out = []
    for token, envelope, dkim in itertools.product(
            _token_fields(row.token, sender["sender"], own),
            _envelopes(row.envelope, sender["sender"]), _dkims(row.dkim)):
        out.append(evidence(**{**sender, **token}, envelope_from=envelope, dkim=dkim,
                            staff_require_dkim="staff_require_dkim" in row.settings,
                            staff_unverified_on_behalf="staff_unverified_on_behalf"
                            in row.settings))
    return out


@pytest.mark.parametrize("row", TRUST_TABLE,
                         ids=[f"{n}:{r.sender}|{r.token}|{r.envelope}|{r.dkim}"
                              f"|{'+'.join(r.settings)}" for n, r in enumerate(TRUST_TABLE)])
def test_every_row_of_the_trust_table_holds(row: TrustRow) -> None:
    cases = cases_of(row)
    assert cases
    own = ORG_OF_CASE[row.sender]
    for case in cases:
        verdict = decide(case)
        assert (verdict.kind, verdict.reason) == (row.verdict, row.reason), case
        if row.verdict == "staff_reply":
            assert verdict.ticket_id == case.staff_token_ticket
        elif row.verdict == "staff_action":
            expected = "on_behalf" if case.asks_on_behalf else "read_only"
            assert verdict.action == expected
        elif row.verdict == "client_content":
            assert verdict.ticket_id == case.client_refs[0].ticket_id
        elif row.verdict == "new_ticket":
            assert verdict.org_slug == own and verdict.ticket_id is None
        if case.released:
            assert not verdict.staff_authority


def test_the_table_names_every_kind_of_sender_and_token() -> None:
    assert {r.sender for r in TRUST_TABLE} == set(get_args(SenderCase))
    assert {r.token for r in TRUST_TABLE} == set(get_args(TokenCase))


def test_the_security_documentation_shows_exactly_the_trust_table() -> None:
    root = Path(__file__).resolve().parents[2]
    for page in (root / "docs" / "security.md", root / "README.md"):
        assert trust_table_markdown() in page.read_text(), page


# --- properties ---------------------------------------------------------------------------

_ADDRESSES = st.sampled_from(["dev1@agency.example", "DEV1@agency.example",
                              "nobody@agency.example", "attacker@evil.example",
                              "alice@client.example", "bob@clientb.example", "", "<>"])
_ORGS = st.sampled_from(["clientco", "orgb", "release"])
_SENDERS = st.sampled_from([DEV1, ALICE, BOB, MALLORY])
_REFS = st.builds(
    TicketRef, ticket_id=st.integers(1, 50), org_slug=_ORGS,
    participants=st.frozensets(_ADDRESSES, max_size=3),
    how=st.sampled_from(["staff_token", "our_message_id", "client_message_id", "subject",
                         "reply_address"]))


@st.composite
def any_evidence(draw: st.DrawFn, staff_token: bool = True) -> Evidence:
    refs = draw(st.lists(_REFS, max_size=4, unique_by=lambda r: r.ticket_id))
    return Evidence(
        sender=draw(_SENDERS), envelope_from=draw(_ADDRESSES),
        staff_token_ticket=draw(st.none() | st.integers(1, 50)) if staff_token else None,
        client_refs=tuple(refs), dkim=draw(st.sampled_from([True, False, None])),
        staff_require_dkim=draw(st.booleans()), org_require_dkim=draw(st.booleans()),
        staff_unverified_on_behalf=draw(st.booleans()), released=draw(st.booleans()),
        released_to_org=draw(st.none() | _ORGS), asks_on_behalf=draw(st.booleans()),
        asks_read_only=draw(st.booleans()))


@given(any_evidence(staff_token=False))
def test_no_evidence_without_a_staff_token_ever_yields_a_staff_reply(e: Evidence) -> None:
    assert decide(e).kind != "staff_reply"


@given(any_evidence())
def test_a_foreign_ticket_the_sender_is_not_on_never_gets_client_content(e: Evidence) -> None:
    verdict = decide(e)
    if verdict.kind != "client_content":
        return
    home = (e.released_to_org or e.sender.org_slug) if e.released else e.sender.org_slug
    email = e.sender.email.lower()
    foreign = {r.ticket_id for r in e.client_refs
               if r.org_slug != home and email not in {p.lower() for p in r.participants}}
    assert verdict.ticket_id not in foreign


@given(any_evidence())
def test_staff_authority_needs_staff_from_the_exact_envelope_and_dkim_where_required(
        e: Evidence) -> None:
    verdict = decide(e)
    if not verdict.staff_authority:
        return
    assert e.sender.kind == "staff" and not e.released
    assert e.envelope_from.strip("<> ").lower() == e.sender.email
    assert e.dkim is True or not e.staff_require_dkim
    if verdict.kind == "staff_reply":
        assert verdict.ticket_id == e.staff_token_ticket
    if verdict.action == "on_behalf":
        assert e.dkim is True or (e.dkim is None and e.staff_unverified_on_behalf)


@given(any_evidence())
def test_every_verdict_is_well_formed(e: Evidence) -> None:
    verdict = decide(e)
    assert (verdict.kind == "quarantine") == (verdict.reason is not None)
    assert (verdict.kind in ("client_content", "staff_reply")) == (
        verdict.ticket_id is not None)
    if verdict.notify_staff is not None:
        assert verdict.notify_staff == e.sender.email and e.sender.kind == "staff"
        assert not e.released
    if e.sender.kind == "unknown" and not e.released:
        assert verdict.reason == "unknown_sender"
