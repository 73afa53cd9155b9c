"""Messages per second from a Dovecot mailbox into tickets, and ``import mbox`` of the same
mail, with the time spent in each stage.

Run (as root, with dovecot-imapd installed):
``.venv/bin/python bench/bench_imap_ingest.py [--messages 5000] [--live]``

The mail is ``tests.mailgen.history``: 60% new tickets (each from its own sender, so each
is acknowledged), 30% replies threading onto them, 10% unknown senders (quarantined).
For each database (embedded SQLite; PostgreSQL too when POSTDESK_TEST_POSTGRES_URL is set):

IMAP -> tickets, one pass, sequential so each stage is timed on its own:
  fetch    UID FETCH BODY.PEEK[] from Dovecot (batches of ``batch_size``)
  commit   ``accept``: blob written and fsynced, raw_messages row committed
  move     UID MOVE to Processed
  parse    the pipeline's parse step (mail-parser)
  ticket   the pipeline's other steps (sender, threading, ticket, SLA, acknowledgement...)
  tx       the rest of ``process_inbound``: row lock, commit, rendering the drafts
Baseline: the same FETCH with nothing else (what IMAP alone costs on this machine).

import mbox (notify off, as ``postdesk import`` does by default):
  read, commit, parse, ticket, tx as above. Baseline: reading the mbox with nothing else.

``--live`` adds an end-to-end run of the poller thread and four worker threads at once,
as ``postdesk serve`` runs them, timed until every message is processed and every
acknowledgement written. Ratios are against the baseline measured in the same run, so
they compare across machines. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import mailbox
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Runnable as a script from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapclient import IMAPClient  # noqa: E402
from sqlalchemy import select  # noqa: E402

from postdesk.app import App  # noqa: E402
from postdesk.importer import Importer  # noqa: E402
from postdesk.ingest.imap import ImapPoller  # noqa: E402
from postdesk.storage.models import RawMessage  # noqa: E402
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline  # noqa: E402
from postdesk.workflow.pipeline.process import process_inbound  # noqa: E402
from postdesk.workflow.pipeline.runner import Step  # noqa: E402
from postdesk.workflow.rules.config import parse_config  # noqa: E402
from tests.dovecot import DovecotServer  # noqa: E402
from tests.mailgen import history, write_mbox  # noqa: E402
from tests.support import backend, config_text, wait_for  # noqa: E402

PASSWORD_ENV = "PD_BENCH_IMAP_PW"


def imap_toml(dc: DovecotServer, batch_size: int) -> str:
    return (f'[[imap]]\nname = "bench"\nhost = "127.0.0.1"\nport = {dc.port}\nssl = false\n'
            f'username = "support@desk.example"\npassword_env = "{PASSWORD_ENV}"\n'
            f'processed_folder = "Processed"\nbatch_size = {batch_size}\n')


def timed_steps(times: Counter[str]) -> Pipeline:
    """The built-in pipeline, each step adding its running time to ``times``."""
    def wrap(s: Step[Any]) -> Step[Any]:
        def run(ctx: Any) -> None:
            started = time.perf_counter()
            try:
                s.run(ctx)
            finally:
                times["parse" if s.name == "parse" else "ticket"] += (
                    time.perf_counter() - started)
        return Step(s.name, run)
    return Pipeline(checks=[wrap(s) for s in BUILTIN.checks],
                    handlers=[wrap(s) for s in BUILTIN.handlers],
                    notify=[wrap(s) for s in BUILTIN.notify], reactions=BUILTIN.reactions)


@contextmanager
def dovecot(raws: list[bytes]) -> Iterator[DovecotServer]:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="pd-bench-", dir=base))
    server = DovecotServer(root)
    server.start()
    try:
        server.append_many(raws)
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_app(kind: str, extra: str) -> Iterator[App]:
    tmp = Path(tempfile.mkdtemp(prefix="pd-bench-db-"))
    try:
        with backend(kind, tmp) as be, App.open(parse_config(
                config_text(be, tmp / "data", extra=extra), environ={})) as app:
            app.upgrade_database()
            app.sync_directory()
            yield app
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def raw_fetch_baseline(dc: DovecotServer, batch: int) -> float:
    started = time.perf_counter()
    with IMAPClient(dc.host, port=dc.port, ssl=False) as client:
        client.login(dc.default_user, dc.users[dc.default_user])
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search(["ALL"]))
        for i in range(0, len(uids), batch):
            client.fetch(uids[i:i + batch], ["BODY.PEEK[]"])
    return time.perf_counter() - started


def process_pending(app: App, times: Counter[str]) -> float:
    """Process every pending raw message in arrival order, timing the steps."""
    with app.sessions() as s:
        ids = list(s.scalars(select(RawMessage.id).where(RawMessage.status == "pending")
                             .order_by(RawMessage.id)))
    pipeline = timed_steps(times)
    started = time.perf_counter()
    for raw_id in ids:
        process_inbound(app.services, raw_id, pipeline)
    return time.perf_counter() - started


def bench_imap(kind: str, raws: list[bytes], batch: int) -> dict[str, Any]:
    with dovecot(raws) as dc:
        baseline = raw_fetch_baseline(dc, batch)
        with fresh_app(kind, imap_toml(dc, batch)) as app:
            poller = ImapPoller(app.services, app.accept, app.dispatch, app.config.imap[0])
            started = time.perf_counter()
            stats = poller.run_once()
            ingest = time.perf_counter() - started
            assert stats.accepted == len(raws), stats
            times: Counter[str] = Counter()
            processing = process_pending(app, times)
    stages = {"fetch": stats.fetch_s, "commit": stats.accept_s, "move": stats.acknowledge_s,
              "other ingest": ingest - stats.fetch_s - stats.accept_s - stats.acknowledge_s,
              "parse": times["parse"], "ticket": times["ticket"],
              "tx": processing - times["parse"] - times["ticket"]}
    return {"n": len(raws), "baseline": baseline, "ingest": ingest, "total": ingest + processing,
            "stages": stages}


def bench_live(kind: str, raws: list[bytes], batch: int) -> dict[str, Any]:
    """Poller and four worker threads together, as `postdesk serve` runs them."""
    with dovecot(raws) as dc, fresh_app(kind, imap_toml(dc, batch)) as app:
        app.start_workers(threads=4)
        poller = ImapPoller(app.services, app.accept, app.dispatch, app.config.imap[0])
        started = time.perf_counter()
        poller.start()
        try:
            def settled() -> bool:
                with app.sessions() as s:
                    done = s.scalar(select(RawMessage.id).where(
                        RawMessage.status != "pending").order_by(RawMessage.id.desc())
                        .limit(1))
                    pending = s.scalar(select(RawMessage.id).where(
                        RawMessage.status == "pending").limit(1))
                return poller.stats.accepted == len(raws) and done is not None \
                    and pending is None
            wait_for(settled, 3600, interval=0.1, what="all processed")
            elapsed = time.perf_counter() - started
        finally:
            poller.stop()
    return {"n": len(raws), "total": elapsed}


def bench_import(kind: str, messages: list[Any]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pd-bench-mbox-"))
    try:
        path = write_mbox(tmp / "history.mbox", messages)
        started = time.perf_counter()
        box = mailbox.mbox(path, create=False)
        for raw in map(box.get_bytes, box.keys()):  # same path as the importer
            del raw
        baseline = time.perf_counter() - started
        with fresh_app(kind, "") as app:
            times: Counter[str] = Counter()
            importer = Importer(app.services, app.dispatch, "mbox",
                                pipeline=timed_steps(times), warn=print)
            started = time.perf_counter()
            summary = importer.run(importer.sources([str(path)]))
            total = time.perf_counter() - started
        assert summary.failed == 0 and summary.total == len(messages), summary.as_json()
        t = summary.timings
        stages = {"read": t["read"], "commit": t["accept"], "parse": times["parse"],
                  "ticket": times["ticket"],
                  "tx": t["process"] - times["parse"] - times["ticket"],
                  "other": total - t["read"] - t["accept"] - t["process"]}
        return {"n": len(messages), "baseline": baseline, "total": total, "stages": stages,
                "summary": summary.as_json()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(title: str, result: dict[str, Any], baseline_name: str) -> None:
    n, total = result["n"], result["total"]
    print(f"\n{title}")
    if "baseline" in result:
        base = result["baseline"]
        print(f"  {baseline_name:<34} {n / base:>9.0f} msg/s  (baseline)")
        print(f"  {'into tickets':<34} {n / total:>9.1f} msg/s  "
              f"{total / base:>7.0f}x the baseline's time")
    else:
        print(f"  {'into tickets':<34} {n / total:>9.1f} msg/s")
    if "ingest" in result:
        print(f"  {'  of which to raw store (poller)':<34} {n / result['ingest']:>9.1f} msg/s")
    for stage, seconds in result.get("stages", {}).items():
        print(f"    {stage:<16} {seconds:8.2f} s  {seconds / total:6.1%}  "
              f"{seconds / n * 1000:7.2f} ms/msg")
    if "summary" in result:
        print(f"  summary: {result['summary']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--live", action="store_true",
                        help="also time poller + 4 workers running together")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ[PASSWORD_ENV] = "secret"
    h = history(args.messages, tag="bench")
    raws = h.raws()
    kinds = ["sqlite"] + (["postgres-redis"] if os.environ.get("POSTDESK_TEST_POSTGRES_URL")
                          and os.environ.get("POSTDESK_TEST_REDIS_URL") else [])
    print(f"{args.messages} messages: {h.tickets} new tickets, {h.replies} replies, "
          f"{h.unknown} unknown senders; IMAP batch size {args.batch_size}")
    for kind in kinds:
        db = "SQLite (embedded)" if kind == "sqlite" else "PostgreSQL"
        report(f"[{db}] IMAP mailbox -> tickets", bench_imap(kind, raws, args.batch_size),
               "IMAP FETCH only")
        if args.live:
            report(f"[{db}] IMAP -> tickets, poller + 4 workers concurrently",
                   bench_live(kind, raws, args.batch_size), "")
        report(f"[{db}] postdesk import mbox", bench_import(kind, h.messages),
               "reading the mbox only")


if __name__ == "__main__":
    main()
