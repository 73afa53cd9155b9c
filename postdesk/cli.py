"""The ``postdesk`` command (docs/reference.md). Errors a user can meet print one clear message
and exit non-zero; tracebacks are for bugs only."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from postdesk import logs
from postdesk.workflow.rules.commands import SETTABLE_STATUSES
from postdesk.workflow.rules.config import ConfigError, find_config_path, load_config
from postdesk.workflow.rules.errors import UserError

if TYPE_CHECKING:
    # Imported where used at run time: `config check` and `sla due` must start without
    # the database, broker and template machinery an App pulls in.
    from postdesk.app import App

EXIT_USAGE = 2
EXIT_FAILURE = 1
CONFIG_HELP = "config file (default: $POSTDESK_CONFIG or ./postdesk.toml)"
PRIORITIES = ("P1", "P2", "P3")
# Every status a ticket can be in ("new" until someone acts on it).
TICKET_STATUSES = ("new", "open", "pending", "awaiting_signoff", "resolved", "closed")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("postdesk")
    except PackageNotFoundError:
        return "unknown"


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, ``minimum`` or more."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more: {value}")
        return number
    return parse


_positive = _at_least(1)
_non_negative = _at_least(0)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _setup_logging(verbose: bool = False, fmt: str | None = None) -> None:
    from postdesk.logs import setup_logging

    setup_logging(verbose, fmt)


@contextlib.contextmanager
def _app(args: argparse.Namespace, *, upgrade: bool = False) -> Iterator[App]:
    """The App for a command, its schema checked and directory synced; closed on exit."""
    from postdesk.app import App
    from postdesk.storage.migrate import is_up_to_date

    config = load_config(args.config)
    with App.open(config) as app:
        if upgrade:
            app.upgrade_database()
        elif not is_up_to_date(app.engine):
            if app.engine.dialect.name != "sqlite":
                # PostgreSQL is shared by several processes: upgraded on purpose only.
                raise UserError("the database schema is not up to date: run "
                                "`postdesk db upgrade` first")
            app.upgrade_database()   # the embedded database upgrades itself
        app.sync_directory()
        _startup_over()
        yield app


def _startup_over() -> None:
    """The command's work begins: collect garbage again (see ``_main``), and leave what
    start-up built out of every later collection (modules, classes, mappers: it lives as
    long as the process), so that a long import or a server does not walk it again."""
    if getattr(_startup, "paused_collector", False):
        _startup.paused_collector = False
        gc.enable()
        gc.freeze()


# --- commands -----------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from postdesk.app import App
    from postdesk.workflow.rules.config import parse_config, resolve_paths

    target_dir = Path(args.dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / "postdesk.toml"
    example = (Path(__file__).parent / "example.toml").read_text(encoding="utf-8")
    if path.exists() and not args.force:
        print(f"{path} exists already; keeping it (use --force to overwrite)", file=sys.stderr)
    else:
        path.write_text(example, encoding="utf-8")
        print(f"wrote {path}")
    config = resolve_paths(parse_config(path.read_text(encoding="utf-8"), source=str(path)),
                           target_dir)
    with App.open(config) as app:
        app.upgrade_database()
        app.sync_directory()
    print(f"database ready: {config.desk.database_url}")
    print(f"next: postdesk serve --config {path}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from postdesk.mail.render import check_overrides

    config = load_config(args.config)
    problems = check_overrides(Path(config.desk.data_dir) / "templates")
    if problems:
        print("template override problems (the built-in template is used instead):",
              file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{find_config_path(args.config)}: OK "
          f"({len(config.orgs)} orgs, {len(config.plans)} plans, {len(config.staff)} staff, "
          f"{len(config.imap)} IMAP mailboxes)")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from postdesk.storage.migrate import current_revision

    with _app(args, upgrade=True) as app:
        print(f"database at revision {current_revision(app.engine)}")
    return 0


def _run_until_signalled(start: Callable[[], None], stop: Callable[[], None],
                         what: str, app: App | None = None,
                         failure: Callable[[], str | None] | None = None) -> int:
    """Run until SIGINT/SIGTERM (exit 0), or until ``failure`` names a part that was lost
    for good (logged by that part; exit 1)."""
    from postdesk.operate import started, stopping

    done = threading.Event()
    metrics_server = started(app, what.split()[-1]) if app is not None else None

    def _handler(signum: int, _frame: object) -> None:
        logging.getLogger("postdesk").info("received %s, shutting down",
                                           signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    start()
    logging.getLogger("postdesk").info("%s running; Ctrl-C to stop", what)
    lost: str | None = None
    try:
        while not done.wait(0.5):
            lost = failure() if failure is not None else None
            if lost:
                break
    finally:
        stop()
        stopping(metrics_server)
        logs.flush()
    if lost:
        print(f"postdesk: {lost}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _pollers(app: App) -> list[Any]:
    if not app.config.imap:
        return []
    from postdesk.ingest.imap import ImapPoller

    return [ImapPoller(app.services, app.accept, app.dispatch, box) for box in app.config.imap]


def cmd_serve(args: argparse.Namespace) -> int:
    with _app(args) as app:
        return _serve(app, verbose=args.verbose, log_format=logs.log_format(args.log_format))


def _serve(app: App, *, verbose: bool = False, log_format: str = "text") -> int:
    from postdesk.door import DoorProcess, WorkersYieldToTheDoor, split_cpus
    from postdesk.scheduler import Scheduler

    # The SMTP door runs in a process of its own (postdesk/door.py): answering 250 never
    # waits for the GIL behind the workers below; with two CPUs or more it has one to
    # itself, and the threads this one starts from here on run on the others.
    door = DoorProcess(app.config, app.services.secret, app.dispatch, app.engine,
                       verbose=verbose, log_format=log_format, cpus=split_cpus())
    scheduler = Scheduler(app.services, app.dispatch)
    pollers = _pollers(app)
    cfg = app.config.smtp_in

    def start() -> None:
        app.broker.add_middleware(WorkersYieldToTheDoor())
        app.start_workers()
        door.start()
        scheduler.start()
        for poller in pollers:
            poller.start()
        logging.getLogger("postdesk").info("SMTP listening on %s:%s (door process %s)",
                                           cfg.host, door.port, door.pid)

    def stop() -> None:
        for poller in pollers:
            poller.stop()
        door.stop()   # then every id it handed over is enqueued, before the workers stop
        scheduler.stop()
        # The workers stop, and the App closes, when cmd_serve's `with` ends.

    try:
        return _run_until_signalled(start, stop, "postdesk serve", app,
                                    failure=lambda: door.failure)
    except UserError:
        stop()
        raise


def cmd_smtp(args: argparse.Namespace) -> int:
    from postdesk.door import smtp_accept, smtp_server, start_smtp

    with _app(args) as app:
        cfg = app.config.smtp_in
        if app.config.desk.broker_url.startswith("stub"):
            logging.getLogger("postdesk").warning(
                "desk.broker_url is stub://: this process only stores mail; it is processed "
                "by `postdesk serve` on the same database (or use `postdesk serve`)")
        server = smtp_server(app.config, smtp_accept(app))
        return _run_until_signalled(lambda: start_smtp(server, cfg.host, cfg.port),
                                    server.stop, "postdesk smtp", app)


def cmd_worker(args: argparse.Namespace) -> int:
    with _app(args) as app:
        if app.config.desk.broker_url.startswith("stub"):
            raise UserError("desk.broker_url: `postdesk worker` needs a shared broker "
                            "(redis:// or amqp://); with stub:// use `postdesk serve`")

        def start() -> None:
            app.start_workers(args.threads)

        return _run_until_signalled(start, app.stop_workers, "postdesk worker", app)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from postdesk.scheduler import Scheduler

    with _app(args) as app:
        scheduler = Scheduler(app.services, app.dispatch)
        return _run_until_signalled(scheduler.start, scheduler.stop, "postdesk scheduler",
                                    app)


def cmd_imap(args: argparse.Namespace) -> int:
    with _app(args) as app:
        return _imap(app)


def _imap(app: App) -> int:
    pollers = _pollers(app)
    if not pollers:
        raise UserError("imap: no [[imap]] mailboxes in the config")
    if app.config.desk.broker_url.startswith("stub"):
        # Mail is still committed; the sweeper of a `postdesk serve` on this database
        # processes it after scheduler.sweep_grace.
        logging.getLogger("postdesk").warning(
            "desk.broker_url is stub://: this process only stores mail; it is processed by "
            "`postdesk serve` (or use `postdesk serve`, which polls IMAP too)")

    def start() -> None:
        for p in pollers:
            p.start()

    def stop() -> None:
        for p in pollers:
            p.stop()

    return _run_until_signalled(start, stop, "postdesk imap", app)


def cmd_import(args: argparse.Namespace) -> int:
    from postdesk.importer import PER_TRANSACTION, import_paths

    with _app(args) as app:
        summary = import_paths(app.services, app.dispatch, args.kind, args.paths,
                               notify=args.notify, batch=args.batch or PER_TRANSACTION,
                               workers=args.workers,
                               as_status="closed" if args.as_closed else args.as_status)
    if args.json:
        _print_json(summary.as_json())
    # Unreadable inputs were named on stderr as they were met; the exit status says so too.
    return EXIT_FAILURE if summary.failed else 0


def _find_ticket(session: Any, prefix: str, ref: str) -> Any:
    from postdesk.storage.models import Ticket
    from postdesk.workflow.rules.refs import parse_ref

    number = parse_ref(prefix, ref)
    ticket = session.get(Ticket, number) if number is not None else None
    if ticket is None:
        raise UserError(f"no ticket {ref!r}")
    return ticket


def _check_org(config: Any, slug: str | None) -> None:
    if slug and config.org(slug) is None:
        raise UserError(f"--org: unknown org {slug!r} (orgs: "
                        f"{', '.join(o.slug for o in config.orgs) or 'none'})")


def cmd_tickets_list(args: argparse.Namespace) -> int:
    from postdesk.tables import console, filter_tickets, resolve_assignee, tickets_table
    from postdesk.views import ticket_json, ticket_list_query
    from postdesk.workflow.rules.zones import desk_zone

    assignee = resolve_assignee(args.assignee) if args.assignee else None
    with _app(args) as app, app.sessions() as session:
        _check_org(app.config, args.org)
        prefix, now = app.config.desk.ticket_prefix, app.now()
        query = filter_tickets(ticket_list_query(), status=args.status, org=args.org,
                               priority=args.priority, assignee=assignee,
                               search=args.search, overdue_at=now if args.overdue else None)
        if args.limit:
            query = query.limit(args.limit)
        tickets = list(session.scalars(query))
        if args.json:
            _print_json([ticket_json(session, t, prefix, now=now) for t in tickets])
            return 0
        if not tickets:
            print("no tickets")
            return 0
        out = console()
        table = tickets_table(tickets, prefix, now, desk_zone(app.config), out.width)
        if out.is_terminal and len(tickets) > out.height - 2:
            with out.pager(styles=True):
                out.print(table)
        else:
            out.print(table)
    return 0


def cmd_tickets_show(args: argparse.Namespace) -> int:
    from postdesk.views import ticket_json

    with _app(args) as app, app.sessions() as session:
        prefix = app.config.desk.ticket_prefix
        data = ticket_json(session, _find_ticket(session, prefix, args.ref), prefix,
                           messages=True, now=app.now())
    if args.json:
        _print_json(data)
        return 0
    print(f"{data['ref']}  {data['subject']}")
    for key in ("status", "priority", "org", "requester", "assignee", "created_at",
                "first_response_due", "next_update_due", "resolution_due", "breaches"):
        print(f"  {key}: {data[key]}")
    for m in data["messages"]:
        print(f"\n--- {m['direction']} {m['kind']} {m['date']} from {m['from']}")
        if m["parse_defects"]:
            print(f"  parse defects: {'; '.join(m['parse_defects'])}")
        print(m["text"].rstrip())
        for a in m["attachments"]:
            print(f"  [attachment] {a['filename']} ({a['size']} bytes)")
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from postdesk.storage.models import Outbox
    from postdesk.views import outbox_json

    with _app(args) as app, app.sessions() as session:
        prefix = app.config.desk.ticket_prefix
        rows = [outbox_json(r, prefix) for r in session.scalars(select(Outbox).order_by(Outbox.id))]
    if args.json:
        _print_json(rows)
    else:
        if not rows:
            print("outbox is empty")
        for r in rows:
            print(f"{r['id']:>6}  {r['status']:<10} {','.join(r['to']):<30} {r['subject'][:60]}")
    return 0


def cmd_outbox_show(args: argparse.Namespace) -> int:
    from postdesk.storage.models import Outbox
    from postdesk.views import outbox_json

    with _app(args) as app, app.sessions() as session:
        row = session.get(Outbox, args.id)
        if row is None:
            raise UserError(f"no outbox entry {args.id}")
        data, raw = outbox_json(row, app.config.desk.ticket_prefix), row.raw
    if raw is None and (args.raw or args.html):
        # A draft: decided and committed, but not rendered (yet, or it failed to).
        raise UserError(f"outbox entry {args.id} ({data['status']}) has not been "
                        "rendered: no bytes to show")
    if args.raw:
        sys.stdout.buffer.write(raw or b"")
        sys.stdout.flush()
        return 0
    print(f"status: {data['status']}  attempts: {data['attempts']}  template: "
          f"{data['template']}  ticket: {data['ticket'] or '-'}")
    if data["last_error"]:
        print(f"last error: {data['last_error']}")
    if raw is None:
        for key in ("to", "cc", "subject", "message_id"):
            print(f"{key}: {data[key]}")
        print("\n(not rendered)")
        return 0
    import email
    from email import policy

    message = email.message_from_bytes(raw, policy=policy.default)
    for name in ("Date", "From", "To", "Cc", "Reply-To", "Subject", "Message-ID",
                 "In-Reply-To"):
        if message[name]:
            print(f"{name}: {message[name]}")
    attachments = [part.get_filename() or part.get_content_type()
                   for part in message.iter_attachments()]
    if attachments:
        print(f"Attachments: {', '.join(attachments)}")
    body = message.get_body(("plain",))
    print()
    print(body.get_content().rstrip() if body is not None else "(no text part)")
    if args.html:
        html = message.get_body(("html",))
        if html is None:
            raise UserError(f"outbox entry {args.id} has no HTML part")
        Path(args.html).write_text(html.get_content(), encoding="utf-8")
        print(f"\nHTML part written to {args.html}", file=sys.stderr)
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from postdesk.storage.models import RawMessage, RawStatus
    from postdesk.views import raw_json

    with _app(args) as app, app.sessions() as session:
        rows = [raw_json(r) for r in session.scalars(
            select(RawMessage).where(RawMessage.status == RawStatus.QUARANTINED)
            .order_by(RawMessage.id))]
    if args.json:
        _print_json(rows)
    else:
        if not rows:
            print("quarantine is empty")
        for r in rows:
            print(f"{r['id']:>6}  {r['reason']:<16} {r['from'] or '-':<30} "
                  f"{(r['subject'] or '')[:50]}")
    return 0


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    from postdesk.workflow.pipeline.quarantine import release

    with _app(args) as app:
        outcome = release(app.services, app.dispatch, args.id, org=args.org)
    print(outcome)
    return 0


def cmd_quarantine_drop(args: argparse.Namespace) -> int:
    from postdesk.workflow.pipeline.quarantine import drop

    with _app(args) as app:
        outcome = drop(app.services, args.id)
    print(outcome)
    return 0


def cmd_sla_due(args: argparse.Namespace) -> int:
    from datetime import datetime

    from postdesk.views import iso
    from postdesk.workflow.rules.sla import build_calendars, due_at, target_for

    config = load_config(args.config)
    plan = config.plans.get(args.plan)
    if plan is None:
        raise UserError(f"--plan: unknown plan {args.plan!r} (plans: {', '.join(config.plans)})")
    try:
        start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--from: not an ISO 8601 instant: {args.start!r}") from None
    if start.tzinfo is None:
        raise UserError("--from: give a time zone, e.g. 2026-11-23T09:00:00Z or +00:00")
    target = target_for(plan, args.priority, args.target)
    due = None
    if target is not None:
        calendar = build_calendars(config)[target.calendar_name]
        due = due_at(calendar, start, target.duration)
    if args.json:
        _print_json({"due": iso(due), "plan": args.plan, "priority": args.priority,
                     "target": args.target, "calendar": target.calendar_name if target else None,
                     "duration": str(target.duration) if target else None})
    elif due is None:
        print(f"no {args.target} target for {args.priority} on plan {args.plan} (best effort)")
    else:
        print(iso(due))
    return 0


class _SendNow:
    """A ``Dispatch`` that sends each ready email at once, in this process, and keeps
    what happened: the command reports the send, so it must not leave it to a worker."""

    def __init__(self, app: App):
        self.app = app
        self.outcomes: dict[int, str] = {}

    def inbound(self, raw_id: int) -> None:
        self.app.dispatch.inbound(raw_id)

    def outbox(self, *outbox_ids: int) -> None:
        from postdesk.outbound.sender import send_outbox

        for outbox_id in outbox_ids:
            self.outcomes[outbox_id] = send_outbox(self.app.services, self.app.transport,
                                                   outbox_id).outcome


def cmd_digest(args: argparse.Namespace) -> int:
    from postdesk.storage.models import Outbox
    from postdesk.workflow.desk.digest import build_digest, queue_digest

    with _app(args) as app:
        manager = args.manager.lower()
        if args.dry_run:
            digest = build_digest(app.services, app.now())
            body = app.renderer.render("digest", {"d": digest, "desk": app.config.desk,
                                                  "ticket": None})
            print(body.text)
            if body.html is not None:
                html_path = Path(args.html) if args.html else (
                    Path(app.config.desk.data_dir) / f"digest-{digest.period}.html")
                html_path.parent.mkdir(parents=True, exist_ok=True)
                html_path.write_text(body.html, encoding="utf-8")
                print(f"HTML part written to {html_path}")
            return 0
        send_now = _SendNow(app)
        outbox_id = queue_digest(app.services, send_now, manager, app.now())
        if outbox_id is None:
            print(f"this period's digest for {manager} was sent already")
            return 0
        outcome = send_now.outcomes.get(outbox_id)
        if outcome is None:
            # Not handed to the sender: suppressed, or it could not be rendered.
            with app.sessions() as session:
                row = session.get_one(Outbox, outbox_id)
                outcome = row.status + (f" ({row.last_error})" if row.last_error else "")
        print(f"digest for {manager}: outbox {outbox_id}, {outcome}")
        return 0


def cmd_report_time(args: argparse.Namespace) -> int:
    from postdesk.storage.models import Org
    from postdesk.workflow.desk.statement import build_statement
    from postdesk.workflow.rules.report import parse_month, statement_csv

    try:
        year, month = parse_month(args.month)
    except ValueError as exc:
        raise UserError(f"--month: {exc}") from None
    with _app(args) as app, app.sessions() as session:
        _check_org(app.config, args.org)
        query = select(Org).where(Org.active.is_(True)).order_by(Org.slug)
        if args.org:
            query = query.where(Org.slug == args.org)
        statements = [build_statement(session, app.services, org, year, month, app.now())
                      for org in session.scalars(query)]
    if args.csv:
        sys.stdout.write(statement_csv([row for st in statements for row in st.tickets]))
        return 0
    for st in statements:
        if not st.tickets and st.allowance is None:
            continue
        print(f"{st.org_name} ({st.org}), {st.month_name}: {len(st.tickets)} tickets, "
              f"time logged {st.total_time}")
        if st.allowance:
            a = st.allowance
            print(f"  allowance {a['allowance']} + rolled over {a['rollover_in']} = "
                  f"{a['available']}; used {a['used']}; remaining {a['remaining']}; "
                  f"carried into next month {a['rollover_out']}")
        for t in st.tickets:
            print(f"  {t['ticket']:>8}  {t['priority']}  {t['time']:>8}  {t['subject'][:50]}")
    return 0


# --- parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postdesk", description="postdesk: an email-driven support desk.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=["text", "json"], default=None,
                        help="log lines as text or one JSON object each "
                             "(default: $POSTDESK_LOG_FORMAT, else text)")
    parser.add_argument("--version", action="version", version=f"postdesk {_version()}")
    parser.add_argument("--config", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str,
            parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        # Before or after the subcommand: SUPPRESS keeps the one given before.
        p.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        p.set_defaults(fn=fn)
        return p

    def group(name: str, help_: str) -> Any:
        """A command with subcommands: ``postdesk tickets`` alone names them."""
        # No dest: argparse then names the choices ({list,show}) when one is missing.
        return sub.add_parser(name, help=help_, description=help_).add_subparsers(
            required=True)

    p = add("init", cmd_init, "write an example postdesk.toml and create the database")
    p.add_argument("--dir", default=".", help="where to write postdesk.toml")
    p.add_argument("--force", action="store_true", help="overwrite an existing postdesk.toml")

    add("serve", cmd_serve, "all-in-one: SMTP in, IMAP pollers, workers, scheduler")
    add("smtp", cmd_smtp, "the SMTP ingest server alone")
    add("imap", cmd_imap, "the IMAP pollers alone")
    p = add("import", cmd_import, "ingest mbox/maildir/eml files through the pipeline")
    p.add_argument("kind", choices=["mbox", "maildir", "eml"])
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="mbox files, maildir directories, or .eml files/directories")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--notify", action="store_true",
                   help="send acknowledgements as for live mail (default: import silently)")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="messages recorded per database transaction (default 100); on "
                        "SQLite a live desk on the same database waits for one batch to "
                        "accept mail, so lower it there; 1: each message on its own, as "
                        "live mail")
    p.add_argument("--workers", type=_non_negative, metavar="N",
                   help="helper processes that parse the next emails, and render the "
                        "emails written, while this one records them (default: 1 with "
                        "two CPUs or more and at least 50 messages, else 0); 0: all in "
                        "this process")
    filed = p.add_mutually_exclusive_group()
    filed.add_argument("--as-closed", action="store_true",
                       help="file the imported tickets as closed (as of their last email)")
    filed.add_argument("--as-status", metavar="STATUS",
                       choices=SETTABLE_STATUSES,
                       help="file the imported tickets in this status")
    p = add("worker", cmd_worker, "Dramatiq workers alone (needs redis:// or amqp://)")
    p.add_argument("--threads", type=int, default=None)
    add("scheduler", cmd_scheduler, "the scheduler alone (SLA scans, sweeps, digests)")

    db = group("db", "database schema")
    add("upgrade", cmd_db_upgrade, "apply migrations (alembic)", db)

    cfg = group("config", "configuration")
    add("check", cmd_config_check, "validate the config; print every problem with its key",
        cfg)

    tickets = group("tickets", "tickets")
    p = add("list", cmd_tickets_list, "list tickets", tickets)
    p.add_argument("--status", choices=TICKET_STATUSES)
    p.add_argument("--org", help="org slug")
    p.add_argument("--priority", choices=PRIORITIES)
    p.add_argument("--assignee", metavar="EMAIL|me",
                   help="assigned to EMAIL; me = $POSTDESK_STAFF")
    p.add_argument("--search", metavar="TEXT", help="TEXT in the subject or any message")
    p.add_argument("--overdue", action="store_true", help="a running clock is past due")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N tickets")
    p.add_argument("--json", action="store_true")
    p = add("show", cmd_tickets_show, "one ticket with its messages", tickets)
    p.add_argument("ref", help="e.g. PD-12")
    p.add_argument("--json", action="store_true")

    outbox = group("outbox", "emails written")
    p = add("list", cmd_outbox_list, "emails written, with status", outbox)
    p.add_argument("--json", action="store_true")
    p = add("show", cmd_outbox_show, "one email", outbox)
    p.add_argument("id", type=int)
    p.add_argument("--raw", action="store_true", help="print it exactly as sent")
    p.add_argument("--html", metavar="FILE", help="also write its HTML part to FILE")

    quarantine = group("quarantine", "mail that did not become ticket content")
    p = add("list", cmd_quarantine_list, "quarantined messages with reasons", quarantine)
    p.add_argument("--json", action="store_true")
    p = add("release", cmd_quarantine_release,
            "process a message again as client content of an org (--org, else the "
            "sender's own org). Release is not a pardon: it never grants staff "
            "authority, never runs # commands and never relays as staff, whatever the "
            "From address says", quarantine)
    p.add_argument("id", type=int)
    p.add_argument("--org", help="org to file an unknown sender's ticket under")
    p = add("drop", cmd_quarantine_drop, "discard a message (kept, recorded as dropped)",
            quarantine)
    p.add_argument("id", type=int)

    p = add("digest", cmd_digest, "build (and send) a manager's digest now")
    p.add_argument("--manager", required=True, help="manager's email address")
    p.add_argument("--dry-run", action="store_true",
                   help="print the text, write the HTML to a file, send nothing")
    p.add_argument("--html", metavar="FILE",
                   help="with --dry-run: where to write the HTML (default: "
                        "data_dir/digest-PERIOD.html)")

    report = group("report", "figures for invoicing")
    p = add("time", cmd_report_time, "time logged per org and ticket in a month, with "
            "the allowance (the monthly statement's figures)", report)
    p.add_argument("--month", required=True, metavar="YYYY-MM")
    p.add_argument("--org", help="org slug (default: every org)")
    p.add_argument("--csv", action="store_true", help="the statement CSV rows instead")

    sla = group("sla", "SLA arithmetic")
    p = add("due", cmd_sla_due, "when a ticket opened at --from is due", sla)
    p.add_argument("--plan", required=True)
    p.add_argument("--priority", required=True, choices=PRIORITIES)
    p.add_argument("--from", dest="start", required=True, metavar="ISO8601")
    p.add_argument("--target", default="first_response",
                   choices=["first_response", "next_update", "resolution"])
    p.add_argument("--json", action="store_true")
    from postdesk.operate import add_operate_commands

    add_operate_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `postdesk tickets show X | head -1`: the reader left; end quietly. Point stdout
        # at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


# Per thread (tests run commands in threads): whether this thread's ``_main`` turned the
# collector off and ``_startup_over`` is to turn it on.
_startup = threading.local()


def _main(argv: Sequence[str] | None) -> int:
    # Start-up (importing the desk's modules and libraries, opening the App) allocates a
    # few hundred thousand objects that live as long as the process and frees almost
    # none: the collector's passes over them find nothing and cost ~0.15 s of CPU per
    # command. It is off until the command's work begins (``_startup_over``), and on
    # again, whatever happens, when the command returns. A collector that was off
    # already (someone else's choice) is left alone.
    owner = gc.isenabled()
    if owner:
        gc.disable()
    _startup.paused_collector = owner
    try:
        return _run(argv)
    finally:
        _startup.paused_collector = False
        if owner:
            gc.unfreeze()
            gc.enable()


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.log_format)
    command: Callable[[argparse.Namespace], int] = args.fn
    try:
        return command(args)
    except ConfigError as exc:
        print("configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"postdesk: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperationalError as exc:
        # An unreachable or refused database is the operator's to fix (README: exit 2).
        print(f"postdesk: cannot use the database: {exc.orig}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
