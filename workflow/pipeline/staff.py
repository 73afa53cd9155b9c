"""Handler for staff email, in the record phase: a trusted reply is stored, its commands
applied and its text relayed to the client; a staff email with no ticket may open one on
a client's behalf. It acts only within the trust verdict (``checks.decide_trust``):
staff authority needs an exact envelope, a staff-only token and, where required, DKIM."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from postdesk.mail.thread_index import outlook_thread_index
from postdesk.storage.directory import org_by_slug, staff_by_email
from postdesk.storage.models import Attachment, Message, Staff, Ticket
from postdesk.workflow.desk.attachments import draft_file, message_attachments
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.merge import (
    merge_refusal,
    merge_tickets,
    message_to_split,
    split_message,
    split_refusal,
    tell_split,
)
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.desk.staff_commands import apply_command
from postdesk.workflow.desk.ticket_lookup import client_thread
from postdesk.workflow.desk.tickets import open_ticket, store_message
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Handled, Quarantine, step
from postdesk.workflow.rules import commands as cmd
from postdesk.workflow.rules.attachments import FileFacts, relay_refusals
from postdesk.workflow.rules.refs import MAX_SUBJECT, ticket_ref
from postdesk.workflow.rules.senders import identify_sender
from postdesk.workflow.rules.zones import desk_zone, org_zone


@step
def staff_mail(ctx: Inbound) -> None:
    """Handle a staff email completely, then end the pipeline."""
    verdict = ctx.verdict
    if not ctx.from_staff or verdict is None or not verdict.staff_authority:
        return
    staff = staff_by_email(ctx.session, ctx.email.from_addr or "")
    assert staff is not None
    if ctx.auto_reply:
        # A staff out-of-office answering a notification: note it, never relay it.
        if ctx.ticket is None:
            raise Quarantine("auto_reply", f"{ctx.auto_reason} from staff")
        _store(ctx, ctx.ticket, "system", ctx.visible_text, staff)
        raise Handled("auto_reply")
    zone = (org_zone(ctx.config, ctx.ticket.org.slug, ctx.ticket.org.plan) if ctx.ticket
            else desk_zone(ctx.config))
    parse = cmd.parse_commands(ctx.visible_text, now=ctx.now, tz=zone)
    ctx.staff_commands = parse
    if ctx.ticket is None:
        _start_ticket_for_client(ctx, parse, staff)
    ticket = ctx.ticket
    assert ticket is not None
    canned, canned_errors = _canned_text(ctx, ticket, staff, parse)
    move, move_errors = _merge_or_split(ctx, ticket, parse)
    errors = [*parse.errors, *canned_errors, *move_errors]
    if errors:
        _store(ctx, ticket, "internal", parse.body, staff)
        add_event(ctx.session, ticket, "command_errors", ctx.now, staff.email,
                  errors=[f"{e.line}: {e.problem}" for e in errors])
        raise Handled("command_errors", data=[{"line": e.line, "problem": e.problem}
                                              for e in errors])
    internal = any(isinstance(c, cmd.Internal) for c in parse.commands)
    body = "\n\n".join(part for part in [*canned, parse.body.strip()] if part)
    # A file sent with no words is still meant for the client (an inline image alone, such
    # as a signature logo, is not).
    relay = not internal and bool(body or any(not a.inline for a in ctx.email.attachments))
    refusals = relay_refusals(_parsed_files(ctx), ctx.config.desk.notify_attachment_bytes) \
        if relay else []
    if refusals:
        # All or nothing: the client never gets the text without the files it mentions.
        _store(ctx, ticket, "internal", body, staff)
        add_event(ctx.session, ticket, "relay_refused", ctx.now, staff.email,
                  problems=refusals)
        raise Handled("relay_refused", data=refusals)
    ticket = _move(ctx, ticket, staff, move)
    message = _store(ctx, ticket, "public" if relay else "internal", body, staff)
    _apply(ctx, ticket, staff, parse, message)
    if relay:
        relay_to_client(ctx, ticket, staff, body, message_attachments(ctx.session, message.id))
    raise Handled("staff_reply")


_Move = tuple[str, Ticket | Message] | None


def _merge_or_split(ctx: Inbound, ticket: Ticket, parse: cmd.CommandParse
                    ) -> tuple[_Move, list[cmd.CommandError]]:
    """What ``#merge PD-n`` / ``#split`` would do, or why it cannot: checked before
    anything is done, like every command error."""
    merges = [c for c in parse.commands if isinstance(c, cmd.Merge)]
    splits = [c for c in parse.commands if isinstance(c, cmd.Split)]
    if not merges and not splits:
        return None, []
    if len(merges) + len(splits) > 1:
        return None, [cmd.CommandError("#merge / #split",
                                       "one #merge or one #split per email")]
    if merges:
        [merge] = merges
        written = f"#merge {merge.prefix + '-' if merge.prefix else ''}{merge.number}"
        target, why = merge_refusal(ctx.session, ctx.config.desk.ticket_prefix, ticket,
                                    merge.prefix, merge.number)
        if why or target is None:
            return None, [cmd.CommandError(written, why or "no such ticket")]
        return ("merge", target), []
    message = message_to_split(ctx.session, ticket, ctx.email.in_reply_to, ctx.email.text or "")
    why = split_refusal(ctx.session, ticket, message)
    if why or message is None:
        return None, [cmd.CommandError("#split", why or "nothing to split")]
    return ("split", message), []


def _move(ctx: Inbound, ticket: Ticket, staff: Staff, move: _Move) -> Ticket:
    """Carry out the merge or split; the ticket the rest of the email then acts on."""
    if move is None:
        return ticket
    what, subject = move
    if what == "merge":
        assert isinstance(subject, Ticket)
        merge_tickets(ctx.session, ctx.services, ctx.outbox, source=ticket, target=subject,
                      staff=staff, now=ctx.now)
        ctx.ticket = subject
        return subject
    assert isinstance(subject, Message)
    new = split_message(ctx.session, ctx.services, ticket=ticket, message=subject,
                        staff=staff, now=ctx.now)
    tell_split(ctx.services, ctx.outbox, ctx.session, old=ticket, new=new, message=subject)
    ctx.ticket, ctx.created_ticket = new, True
    return new


def _canned_text(ctx: Inbound, ticket: Ticket, staff: Staff, parse: cmd.CommandParse
                 ) -> tuple[list[str], list[cmd.CommandError]]:
    """The text of each ``#reply NAME`` (org override, desk, built-in), in order; an
    unknown name is a command error like any other."""
    texts: list[str] = []
    errors: list[cmd.CommandError] = []
    context = {"desk": ctx.config.desk, "ticket": ticket, "ref": ctx.ticket_ref,
               "requester": ticket.requester_email, "staff_name": staff.name or staff.email}
    for command in parse.commands:
        if isinstance(command, cmd.CannedReply):
            text = ctx.services.renderer.canned_reply(command.name, context, ticket.org.slug)
            if text is None:
                errors.append(cmd.CommandError(f"#reply {command.name}",
                                               f"no canned reply named {command.name!r}"))
            else:
                texts.append(text.strip())
    return texts, errors


def _parsed_files(ctx: Inbound) -> list[FileFacts]:
    limit = ctx.config.desk.max_attachment_bytes
    return [FileFacts(key=i, filename=a.filename, size=a.size,
                      kept=not a.too_large and a.size <= limit)
            for i, a in enumerate(ctx.email.attachments)]


def _apply(ctx: Inbound, ticket: Ticket, staff: Staff, parse: cmd.CommandParse,
           message: Message, skip: tuple[type, ...] = ()) -> None:
    for command in parse.commands:
        if not isinstance(command, skip):
            apply_command(ctx.session, ctx.services, ctx.outbox, ticket=ticket, staff=staff,
                          command=command, message=message, now=ctx.now,
                          dedupe=str(ctx.raw.id))


def _store(ctx: Inbound, ticket: Ticket, kind: str, body: str, staff: Staff) -> Message:
    return store_message(ctx.session, ctx.services.blobs, raw=ctx.raw, mail=ctx.email,
                         ticket=ticket, kind=kind, direction="in", text=body,
                         max_attachment_bytes=ctx.config.desk.max_attachment_bytes,
                         now=ctx.now, author_staff_id=staff.id)


def _start_ticket_for_client(ctx: Inbound, parse: cmd.CommandParse, staff: Staff) -> None:
    """A staff email with no ticket token starts a ticket on a client's behalf when it
    names one (``#org clientco`` or ``#requester alice@client.example``)."""
    org_slug = next((c.slug for c in parse.commands if isinstance(c, cmd.SetOrg)), None)
    requester = next((c.email for c in parse.commands if isinstance(c, cmd.SetRequester)),
                     None)
    if not org_slug and not requester:
        raise Quarantine("no_ticket", "staff email with no ticket token and no #org or "
                                      "#requester to start one")
    if requester:
        org_slug = org_slug or identify_sender(requester, ctx.config).org_slug
    org = org_by_slug(ctx.session, org_slug) if org_slug else None
    if org is None:
        raise Quarantine("no_ticket", f"#org/#requester names no known org ({org_slug})")
    ticket = open_ticket(ctx.session, prefix=ctx.config.desk.ticket_prefix, mail=ctx.email,
                         org=org, requester=requester or ctx.email.from_addr or "",
                         opened_at=ctx.now, now=ctx.now)
    ctx.ticket, ctx.created_ticket = ticket, True
    ticket.assignee_id = staff.id
    message = _store(ctx, ticket, "internal", parse.body.strip(), staff)
    _apply(ctx, ticket, staff, parse, message, skip=cmd.TICKET_CREATION_COMMANDS)
    raise Handled("ticket_opened_by_staff")


def relay_to_client(ctx: Inbound, ticket: Ticket, staff: Staff, body: str,
                    files: Sequence[Attachment] = ()) -> None:
    """The staff member's text, and their files byte for byte, to the client and cc."""
    prefix = ctx.config.desk.ticket_prefix
    ref = ticket_ref(prefix, ticket.id)
    in_reply_to, references = client_thread(ctx.session, ticket)
    public_out = ctx.session.scalar(select(func.count(Message.id)).where(
        Message.ticket_id == ticket.id, Message.direction == "out")) or 0
    keeper = ctx.services.clocks(ctx.session)
    if ticket.status == "new":
        set_status(keeper, ticket, "open", ctx.now, staff.email)
    ctx.outbox.queue(
        dedupe_key=f"relay:{ctx.raw.id}", template="staff_reply",
        to=[ticket.requester_email], cc=[c for c in ticket.cc if c != ticket.requester_email],
        subject=f"Re: [{ref}] {ticket.subject}"[:MAX_SUBJECT], ticket=ticket,
        in_reply_to=in_reply_to, references=references, automatic=False, kind="public",
        extra_headers={"Thread-Topic": ticket.subject[:MAX_SUBJECT],
                       "Thread-Index": outlook_thread_index(f"{prefix}-{ticket.id}",
                                                            ticket.created_at,
                                                            public_out + 1)},
        files=[draft_file(a) for a in files if a.sha256 is not None],
        context={"ref": ref, "body": body, "staff_name": staff.name or staff.email,
                 "inline_images": [a.content_id for a in files
                                   if a.inline and a.content_id and a.sha256]})
    keeper.public_update(ticket, ctx.now)
    add_event(ctx.session, ticket, "public_reply", ctx.now, staff.email)
