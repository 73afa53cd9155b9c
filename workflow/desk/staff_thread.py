"""One conversation per ticket in each staff member's mail client: every email to a
staff member about a ticket names the same root Message-ID (``mail.tokens.
thread_root_id``) in ``In-Reply-To``/``References``. The root is never sent itself; mail
clients thread on the reference alone (as they do for issue trackers' notifications)."""

from __future__ import annotations

from postdesk.mail.tokens import thread_root_id
from postdesk.workflow.desk.services import Services


def staff_thread_root(services: Services, ticket_id: int, person: str) -> str:
    domain = services.config.desk.support_addresses[0].split("@", 1)[1]
    return thread_root_id(services.secret, ticket_id, person, domain)
