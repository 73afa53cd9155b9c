"""Start-up warnings for a desk that would run but silently go nowhere. Logged by every
long-running command (serve, smtp, imap, worker, scheduler) before it starts."""

from __future__ import annotations

from pathlib import Path

from postdesk.workflow.rules.config import Config

# Commands that are one process of a split deployment (others share the database).
SPLIT_PROCESSES = ("smtp", "imap", "worker", "scheduler")


def startup_warnings(config: Config, command: str) -> list[str]:
    warnings: list[str] = []
    if config.smtp_out is None:
        outbox = Path(config.desk.data_dir) / "outbox"
        warnings.append(f"smtp_out is not configured: every email postdesk sends is only "
                        f"written to the local maildir {outbox}; nobody receives it")
    for address in config.desk.support_addresses:
        if not config.staff:
            warnings.append(f"desk.support_addresses: {address} has no [[staff]] configured: "
                            "nobody is told about new tickets")
        elif not config.orgs:
            warnings.append(f"desk.support_addresses: {address} has no [[orgs]] configured: "
                            "every sender is unknown and quarantined")
    shared = command in SPLIT_PROCESSES or not config.desk.database_url.startswith("sqlite")
    if config.desk.secret is None and shared:
        key = Path(config.desk.data_dir) / "secret.key"
        warnings.append(f"desk.secret is not set: this process signs with {key}, which "
                        "every process of the deployment must share; set POSTDESK_SECRET "
                        "to the same value everywhere")
    return warnings
