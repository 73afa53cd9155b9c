"""Peak memory of one email with a 25 MiB attachment, and RSS over many small emails.

Run with the tree's own interpreter (loopback only; about a minute or two)::

    .venv/bin/python bench/bench_memory.py
    .venv/bin/python bench/bench_memory.py --attachment-mib 25 --emails 5000 --max-seconds 240

Every measurement runs in its own child process on a private embedded desk (SQLite,
``broker_url = "stub://"``) in a temporary directory, its schema made by ``postdesk db
upgrade``. Memory is read from ``/proc``: VmRSS (resident now) and VmHWM (peak resident),
the peak reset just before the measured work by writing ``5`` to ``/proc/PID/clear_refs``
(when the kernel refuses, the peak since the process started is reported, and said so).

Rows of the first table:

* ``import only``: the baseline, a process that imports postdesk (the app, the CLI, the
  pipeline, the parser, the SMTP door) and does nothing else; its peak RSS;
* ``accept+process, kept``: a process that opens the App, processes one small email first
  (templates compiled, mappers configured), then reads the big email from a file, passes it
  through ``App.accept`` (blob + row), drops its copy and runs the inbound pipeline on it
  (``App.handle_inbound``: parse, checks, ticket, attachment stored, acknowledgement), with
  ``max_attachment_bytes`` above the attachment so it is kept;
* ``accept+process, over limit``: the same with the default ``max_attachment_bytes``
  (20 MiB): the attachment is recorded as too large and not stored;
* ``postdesk serve over SMTP``: ``postdesk serve`` (workers and scheduler in the desk
  process, the SMTP door in a child process); one small email is sent and processed first,
  then the big one with smtplib, and the peaks are read once it is processed: the sum of
  the peaks of the desk process and its children (an upper bound of their combined peak),
  against the sum of their RSS before.

"peak - baseline" is the row's peak RSS minus the import-only baseline's; "x message" that
over the size of the message as sent (the attachment base64-encoded, ~1.35x its size).
"email's own" is the peak minus the RSS just before the big email arrived.

The second table: one process accepts and processes ``--emails`` small (~2 KB) emails one by
one, each one's send job (its acknowledgement and staff notification, to the local outbox)
run by a worker thread of the in-process broker before the next email (``StubBroker.join``),
and RSS is sampled every tenth of them: flat means no growth with the number of emails.

Prints both tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from benchlib import (
    SUPPORT,
    child_env,
    describe_tree,
    desk_config,
    free_port,
    load_average,
    print_head,
    python_line,
    stop_process,
    wait_for_port,
    wait_until,
)

SCRIPT = Path(__file__).resolve()
TREE = SCRIPT.parent.parent
POSTDESK = Path(sys.executable).with_name("postdesk")
MIB = 1024 * 1024

# --- /proc ---------------------------------------------------------------------------------

def status_kib(pid: int | str, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else -1


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``postdesk serve`` runs its SMTP door as a child)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            pids += [int(child) for child in task.read_text().split()]
        i += 1
    return pids


def reset_peak(pid: int | str) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- emails --------------------------------------------------------------------------------

def small_email(i: int, tag: str) -> bytes:
    body = "".join(f"Line {n} of report {i}: the printer on floor {n % 7} is jammed.\n"
                   for n in range(20))
    text = (f"From: Client {i % 50} <client{i % 50}@client.example>\n"
            f"To: {SUPPORT}\n"
            f"Subject: {tag} {i}: printer trouble\n"
            f"Message-ID: <mem-{tag}-{i}@client.example>\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n\n"
            f"Hello,\n\n{body}\nThanks\n")
    return text.replace("\n", "\r\n").encode()


def big_email(attachment_bytes: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Client <alice@client.example>"
    msg["To"] = SUPPORT
    msg["Subject"] = "Database dump attached"
    msg["Message-ID"] = "<mem-big@client.example>"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    msg.set_content("Hello,\n\nthe dump you asked for is attached.\n\nThanks,\nAlice\n")
    msg.add_attachment(os.urandom(attachment_bytes), maintype="application",
                       subtype="octet-stream", filename="dump.bin")
    return re.sub(rb"\r?\n", b"\r\n", msg.as_bytes())   # CRLF, as on the wire


# --- children ------------------------------------------------------------------------------

def import_postdesk() -> None:
    import postdesk.app
    import postdesk.cli
    import postdesk.ingest.smtp
    import postdesk.mail.parse
    import postdesk.workflow.pipeline.process  # noqa: F401


def child_baseline() -> dict[str, Any]:
    import_postdesk()
    # VmHWM, not ru_maxrss: that keeps the parent's peak across fork and exec.
    return {"rss_kib": status_kib("self", "VmRSS"), "peak_kib": status_kib("self", "VmHWM")}


def open_app(config_path: str) -> Any:
    from postdesk.app import App
    from postdesk.workflow.rules.config import load_config

    app = App(load_config(config_path))
    app.sync_directory()
    return app


def accept_and_process(app: Any, raw: bytes) -> int:
    from postdesk.ingest.accept import Envelope

    result = app.accept(raw, Envelope("client@client.example", (SUPPORT,)), "smtp",
                        enqueue=False)
    raw_id = int(result.raw_id)
    del raw
    app.handle_inbound(raw_id)
    return raw_id


def child_one(config_path: str, eml: str) -> dict[str, Any]:
    import_postdesk()
    app = open_app(config_path)
    accept_and_process(app, small_email(0, "warm"))
    before = status_kib("self", "VmRSS")
    reset = reset_peak("self")
    started = time.perf_counter()
    raw_id = accept_and_process(app, Path(eml).read_bytes())
    seconds = time.perf_counter() - started
    peak = status_kib("self", "VmHWM")
    outcome = query(app, raw_id)
    app.close()
    return {"before_kib": before, "peak_kib": peak, "reset": reset, "seconds": seconds,
            **outcome}


def query(app: Any, raw_id: int) -> dict[str, Any]:
    from sqlalchemy import text

    with app.engine.connect() as conn:
        status, reason = conn.execute(
            text("SELECT status, reason FROM raw_messages WHERE id = :id"), {"id": raw_id}).one()
        attachments = [dict(row._mapping) for row in conn.execute(text(
            "SELECT a.size, a.sha256 IS NOT NULL AS kept FROM attachments a "
            "JOIN messages m ON m.id = a.message_id WHERE m.raw_id = :id"), {"id": raw_id})]
    return {"status": status, "reason": reason, "attachments": attachments}


def child_many(config_path: str, count: int, max_seconds: float) -> dict[str, Any]:
    import_postdesk()
    app = open_app(config_path)
    # Each email's send job runs too, on a worker thread of the in-process broker, as in
    # ``postdesk serve``: left queued, the jobs alone grew the RSS (~220 bytes each).
    app.start_workers(1)
    outbound = app.actors.send_outbox.queue_name
    samples: list[tuple[int, int]] = [(0, status_kib("self", "VmRSS"))]
    step = max(1, count // 10)
    deadline = time.monotonic() + max_seconds
    done = 0
    for i in range(count):
        accept_and_process(app, small_email(i, "many"))
        app.broker.join(outbound, fail_fast=True, timeout=60_000)
        done = i + 1
        if done % step == 0:
            samples.append((done, status_kib("self", "VmRSS")))
        if time.monotonic() > deadline:
            break
    if samples[-1][0] != done:
        samples.append((done, status_kib("self", "VmRSS")))
    sent = sent_count(app)
    app.close()
    return {"samples": samples, "peak_kib": status_kib("self", "VmHWM"), "sent": sent}


def sent_count(app: Any) -> int:
    from sqlalchemy import text

    with app.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'"))
                   .scalar_one())


# --- the orchestrator ----------------------------------------------------------------------

def run_child(*args: str, timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--child", *args], capture_output=True,
                          text=True, env=child_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def make_desk(workdir: Path, name: str, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    config = workdir / f"{name}.toml"
    config.write_text(desk_config(database_url=f"sqlite:///{workdir / f'{name}.db'}",
                                  data_dir=workdir / f"{name}-data", desk_extra=extra,
                                  port=port, max_bytes=64 * MIB))
    subprocess.run([str(POSTDESK), "db", "upgrade", "--config", str(config)], check=True,
                   capture_output=True, env=child_env(), timeout=300)
    return config, port


def pending(db: Path) -> tuple[int, int]:
    """(raw messages, of which pending)."""
    with sqlite3.connect(db, timeout=30) as conn:
        total, waiting = conn.execute(
            "SELECT count(*), coalesce(sum(status = 'pending'), 0) FROM raw_messages"
        ).fetchone()
    return int(total), int(waiting)


def wait_processed(db: Path, total: int, timeout: float) -> bool:
    def processed() -> bool:
        with suppress(sqlite3.Error):
            count, waiting = pending(db)
            return count >= total and waiting == 0
        return False

    return wait_until(processed, timeout)


def serve_row(workdir: Path, raw: bytes, extra: str) -> dict[str, Any]:
    config, port = make_desk(workdir, "serve", extra)
    db = workdir / "serve.db"
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen([str(POSTDESK), "serve", "--config", str(config)], stdout=log,
                            stderr=log, env=child_env())
    try:
        wait_for_port(port, proc, workdir / "serve.log", what="postdesk serve",
                      interval=0.1)
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
            client.sendmail("client0@client.example", [SUPPORT], small_email(0, "warm"))
        if not wait_processed(db, 1, 60):
            raise RuntimeError("the warm-up email was not processed")
        time.sleep(1.0)
        # The desk process and its SMTP door process (and multiprocessing's resource
        # tracker): RSS summed, each one's peak reset, and the peaks summed after, which
        # bounds the tree's peak from above (the peaks need not coincide).
        tree = process_tree(proc.pid)
        rss = {pid: status_kib(pid, "VmRSS") for pid in tree}
        before = sum(rss.values())
        reset = all([reset_peak(pid) for pid in tree])
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
            client.sendmail("alice@client.example", [SUPPORT], raw)
        processed = wait_processed(db, 2, 300)
        seconds = time.perf_counter() - started
        peaks = {pid: status_kib(pid, "VmHWM") for pid in tree}
        peak = sum(peaks.values())
        # Each process's own growth, named: where the email's copies live.
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                 .decode(errors="replace") for pid in tree}
        split = "; ".join(
            f"{'desk' if pid == proc.pid else 'door' if 'spawn_main' in names[pid] else 'other'}"
            f" +{(peaks[pid] - rss[pid]) / 1024:.1f} MiB" for pid in tree)
        with sqlite3.connect(db) as conn:
            status, reason = conn.execute(
                "SELECT status, reason FROM raw_messages ORDER BY id DESC LIMIT 1").fetchone()
        return {"before_kib": before, "peak_kib": peak, "reset": reset, "seconds": seconds,
                "status": status if processed else f"{status} (timed out)", "reason": reason,
                "split": split}
    finally:
        stop_process(proc, grace=30)
        log.close()


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--attachment-mib", type=float, default=25.0)
    parser.add_argument("--emails", type=int, default=2000,
                        help="small emails for the flat-RSS run")
    parser.add_argument("--max-seconds", type=float, default=150.0,
                        help="the flat-RSS run stops after this long")
    parser.add_argument("--no-serve", action="store_true", help="skip the postdesk serve row")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "baseline":
            out = child_baseline()
        elif kind == "one":
            out = child_one(rest[0], rest[1])
        else:
            out = child_many(rest[0], int(rest[1]), float(rest[2]))
        print(json.dumps(out))
        return 0
    if not POSTDESK.exists():
        sys.exit(f"{POSTDESK} not found: run this script with the tree's .venv/bin/python")

    print(f"postdesk memory - tree {describe_tree(TREE)}")
    print(f"{python_line()}, load average {load_average()} at start")
    workdir = Path(tempfile.mkdtemp(prefix="pdbench-mem-"))
    try:
        raw = big_email(int(args.attachment_mib * MIB))
        eml = workdir / "big.eml"
        eml.write_bytes(raw)
        size_kib = len(raw) / 1024
        print(f"one email: {args.attachment_mib:g} MiB attachment, {len(raw) / MIB:.1f} MiB "
              "as sent")
        kept = f"max_attachment_bytes = {int((args.attachment_mib + 8) * MIB)}"
        base = run_child("baseline")
        rows: list[tuple[str, dict[str, Any]]] = []
        for label, extra in (("accept+process, kept", kept),
                             ("accept+process, over limit", "")):
            print(f"  {label} ...", file=sys.stderr, flush=True)
            config, _ = make_desk(workdir, label.split(",")[1].strip().replace(" ", "-"),
                                  extra)
            rows.append((label, run_child("one", str(config), str(eml))))
        if not args.no_serve:
            print("  postdesk serve ...", file=sys.stderr, flush=True)
            try:
                rows.append(("postdesk serve over SMTP, kept", serve_row(workdir, raw, kept)))
            except Exception as exc:  # noqa: BLE001 - the other rows still print
                print(f"  serve row failed: {exc}", file=sys.stderr)
        print(f"  {args.emails} small emails ...", file=sys.stderr, flush=True)
        config, _ = make_desk(workdir, "many")
        many = run_child("many", str(config), str(args.emails), str(args.max_seconds),
                         timeout=args.max_seconds + 300)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    head = (f"{'case':<32}{'peak MiB':>9}{'- base':>8}{'x msg':>7}{'own MiB':>9}"
            f"{'x msg':>7}{'s':>6}  outcome")
    print()
    print_head(head)
    print(f"{'import only (baseline)':<32}{mib(base['peak_kib']):>9}{'':>8}{'':>7}{'':>9}"
          f"{'':>7}{'':>6}  RSS {mib(base['rss_kib'])} MiB")
    for label, r in rows:
        over = r["peak_kib"] - base["peak_kib"]
        own = r["peak_kib"] - r["before_kib"]
        attachments = ", ".join(
            f"{a['size'] / MIB:.0f} MiB {'kept' if a['kept'] else 'not kept'}"
            for a in r.get("attachments", []))
        outcome = f"{r['status']}{' ' + r['reason'] if r.get('reason') else ''}" + (
            f"; attachment {attachments}" if attachments else "") + (
            "" if r["reset"] else "; peak since start (reset refused)") + (
            f" ({r['split']})" if r.get("split") else "")
        print(f"{label:<32}{mib(r['peak_kib']):>9}{mib(over):>8}{over / size_kib:>7.2f}"
              f"{mib(own):>9}{own / size_kib:>7.2f}{r['seconds']:>6.1f}  {outcome}")
    print("peak - base: over the import-only process's peak; own: over the RSS just before the "
          "email; x msg: over the message's size as sent.")

    samples = many["samples"]
    print(f"\nRSS over {samples[-1][0]} small emails, accepted and processed one by one in one "
          f"process, each one's send job run before the next ({many['sent']} emails sent)")
    head = f"{'emails':>8}{'RSS MiB':>10}{'vs 10%':>9}"
    print_head(head)
    first = samples[1][1] if len(samples) > 1 else samples[0][1]
    for done, rss in samples:
        print(f"{done:>8}{mib(rss):>10}{mib(rss - first) if done else '':>9}")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
