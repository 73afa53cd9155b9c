"""The operator's commands (``status``, ``backup``, ``restore``) and what every
long-running command does around its run: start-up warnings and the metrics endpoint.
``postdesk/cli.py`` registers them with one call."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postdesk.workflow.rules.config import load_config

if TYPE_CHECKING:
    from postdesk.app import App

log = logging.getLogger("postdesk")


def started(app: App, command: str) -> Any:
    """Log the start-up warnings and start the metrics endpoint; returns the server."""
    from postdesk.metrics import start_metrics_server
    from postdesk.startup import startup_warnings

    for warning in startup_warnings(app.config, command):
        log.warning("%s", warning)
    return start_metrics_server(app.config.metrics, app.sessions, app.clock)


def stopping(metrics_server: Any) -> None:
    from postdesk.metrics import stop_metrics_server

    stop_metrics_server(metrics_server)


def cmd_status(args: argparse.Namespace) -> int:
    from postdesk.status import render_text, status_report

    report = status_report(load_config(args.config), args.component)
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        print(render_text(report))
    return report.exit_code


def cmd_backup(args: argparse.Namespace) -> int:
    from postdesk.backup import backup

    manifest = backup(load_config(args.config), Path(args.dest))
    print(f"backup written to {args.dest} ({manifest['database']['kind']} database and "
          f"data_dir; secret: {manifest['secret']})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from postdesk.backup import restore

    config = load_config(args.config)
    restore(config, Path(args.src), force=args.force)
    print(f"restored {args.src} into {config.desk.database_url} and {config.desk.data_dir}")
    return 0


def add_operate_commands(
        add: Callable[[str, Callable[[argparse.Namespace], int], str],
                      argparse.ArgumentParser]) -> None:
    p = add("status", cmd_status, "is the desk healthy? exit 0 healthy, 1 degraded, "
                                  "2 a part is unreachable")
    p.add_argument("--json", action="store_true")
    p.add_argument("--component", choices=["smtp", "worker", "scheduler", "imap"],
                   help="check only what this process needs (for health checks)")
    p = add("backup", cmd_backup, "save the database and data_dir (consistent while running)")
    p.add_argument("dest", help="a new directory")
    p = add("restore", cmd_restore, "restore a backup into an empty SQLite desk")
    p.add_argument("src", help="a directory written by `postdesk backup`")
    p.add_argument("--force", action="store_true", help="overwrite an existing database")
