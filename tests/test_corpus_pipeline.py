"""Every message of the shared real-world corpus through accept -> process_inbound.

Requires: no unhandled exception, no ``processing_error``, every message accounted for
in exactly one final state with a reason where it is not ticket content. Skips when the
corpus folder is absent (it is external test data, not part of the repository)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from postdesk.ingest.accept import Envelope
from postdesk.storage.models import Message, RawMessage
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.rules.config import parse_config
from tests.conftest import start_desk, stop_desk
from tests.corpus import corpus_dir, manifest_files, read
from tests.support import backend, config_text

CATCH_ALL = """
[[orgs]]
slug = "public"
name = "Everyone else"
plan = "base"
domains = ["*"]
"""
FINAL = {"processed", "duplicate", "quarantined"}
REASONS = {"unknown_sender", "unauthenticated", "auto_reply", "bounce", "flood",
           "unparseable", "loop", "no_ticket"}


@pytest.mark.slow
def test_every_corpus_message_is_accounted_for(tmp_path: Path) -> None:
    if corpus_dir() is None:
        pytest.skip("shared corpus not present")
    files = manifest_files()
    assert len(files) > 1000
    with backend("sqlite", tmp_path) as be:
        # A catch-all org so most mail goes the whole way to a ticket; a high flood limit
        # because corpus files share senders.
        text = config_text(be, tmp_path / "data", extra=CATCH_ALL,
                           desk_extra="flood_tickets_per_hour = 100000")
        desk = start_desk(parse_config(text, environ={}), smtp=False, workers=False)
        try:
            raw_of: dict[str, int] = {}
            for rel in files:
                accepted = desk.app.accept(read(rel), Envelope(mail_from=None,
                                           rcpt_tos=("support@desk.example",)),
                                           "corpus", enqueue=False, notify=False)
                raw_of[rel] = accepted.raw_id
                process_inbound(desk.app.services, accepted.raw_id)
            with desk.app.sessions() as s:
                raws = {r.id: r for r in s.scalars(select(RawMessage))}
                on_tickets = set(s.scalars(select(Message.raw_id).where(
                    Message.raw_id.is_not(None))))
        finally:
            stop_desk(desk)
    states = Counter(r.status for r in raws.values())
    reasons = Counter(r.reason for r in raws.values() if r.status == "quarantined")
    errors = [(r.id, r.detail) for r in raws.values() if r.reason == "processing_error"]
    print(f"\ncorpus: {len(files)} files, {len(raws)} distinct raw messages; "
          f"{dict(states)}; quarantined by reason {dict(reasons)}")
    assert errors == []
    assert set(states) <= FINAL                         # nothing left pending
    assert set(reasons) <= REASONS
    assert set(raw_of.values()) == set(raws)            # every file maps to a raw message
    for raw in raws.values():
        # Exactly one state: processed mail is ticket content (or a handled request),
        # everything else carries its reason.
        if raw.status == "processed":
            assert raw.reason is None or raw.reason in ("balance_request",)
        else:
            assert raw.reason, raw.id
            assert raw.id not in on_tickets or raw.status == "duplicate"
    # Bounces in the corpus are recognised as such, not turned into tickets.
    # (rfc3464-28 reports a *successful* delivery, "Action: deliverable": automatic mail,
    # not a bounce.)
    bounces = [rel for rel in files if ("/rfc3464-" in rel or "/dsn_" in rel)
               and not rel.endswith("rfc3464-28.eml")]
    assert bounces
    missed = [(rel, raws[raw_of[rel]].status, raws[raw_of[rel]].reason) for rel in bounces
              if raws[raw_of[rel]].reason != "bounce"]
    assert missed == []
