"""Tell bounces and automatic replies from mail a person wrote.

Pure: looks only at the parsed message and the SMTP envelope sender.

Order matters. Machine-readable reports come first (RFC 3462/6522
``multipart/report``: a delivery-status report is a bounce, a feedback report
(ARF, RFC 5965) or a disposition notification (MDN, RFC 8098) is automatic
mail). Then bounces in the many non-standard formats, found by flufl.bounce.
Only then the auto-reply signals of RFC 3834 and common practice: a bounce
often carries ``Auto-Submitted`` too (Exim adds it), and it must still be
recognised as the bounce it is.

Heuristic bounce detection (everything but a DSN) has false positives on
ordinary mail -- flufl.bounce finds "failed" addresses in mailing-list posts
that quote a bounce, or in a client's message that forwards one -- so its
verdict counts only when the message also looks like it came from a mail
system: null or MAILER-DAEMON return path, a MAILER-DAEMON/postmaster
sender, ``X-Failed-Recipients``, ``Auto-Submitted``, or a bounce-like subject
that is not a forward.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Literal

from postdesk.mail.parse import (
    ParsedEmail,
    message_ids,
    normalize_message_id,
    own_parts,
    parse_header_block,
)

__all__ = ["Classification", "Kind", "classify"]


# flufl.bounce logs every detector it runs at INFO (17 lines per message);
# its ERROR tracebacks for detectors that crash on odd input stay visible.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

Kind = Literal["normal", "auto_reply", "bounce"]


@dataclass(frozen=True)
class Classification:
    """What kind of message this is, and the signal that decided it.

    For bounces, ``bounced_addresses`` are the failed recipients (lowercased,
    possibly empty when the report names none we can read), ``permanent`` is
    True for a hard failure, False when only delays/temporary failures are
    reported and None when the report does not say; ``original_message_id``
    is the Message-ID of the email that bounced, when the report returns its
    headers, so the outbound email can be found.
    """

    kind: Kind
    reason: str
    bounced_addresses: list[str] = field(default_factory=list)
    permanent: bool | None = None
    original_message_id: str | None = None


# --- signals shared by several checks ---------------------------------------

_DAEMON_LOCAL_PARTS = {"mailer-daemon", "mailer_daemon", "mail-daemon", "postmaster", "mdaemon"}
# Read in the raw From header: "MAILER-DAEMON <>" has no usable address, and
# some bounces have a mangled one ("<Postmaster\\@x.com@x.com>").
_DAEMON_FROM = re.compile(
    r"\b(mailer[-_]daemon|mail-daemon|mdaemon|postmaster|mail delivery (sub)?system)\b",
    re.IGNORECASE,
)

_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|delivery status notification|failure notice"
    r"|delivery fail|mail delivery failed|non[- ]?deliver|delivery has failed"
    r"|could not be delivered|returned to sender|mail system error|failed delivery"
    r"|delivery problem|unzustellbar|nicht zustellbar|non remis|no entregado"
    r"|non recapitabile|onbestelbaar",
    re.IGNORECASE,
)
# A person forwarding a bounce to support is asking for help, not bouncing.
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|fw|wg|tr|rv|enc|vs|doorst)\s*:", re.IGNORECASE)

_ADDRESS = re.compile(r"^[^\s@<>()\[\]\\,;:\"]+@[^\s@<>()\[\]\\,;:\"]+$")


def _local_part(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def _return_path(parsed: ParsedEmail, envelope_from: str | None) -> str | None:
    """The envelope sender: from SMTP when known, else the Return-Path header.

    Over SMTP the envelope is authoritative (a Return-Path header there was
    written by the sender). Mail fetched over IMAP has only the header, which
    the final delivery agent wrote. None when neither is known.
    """
    value = envelope_from if envelope_from is not None else parsed.header("return-path")
    if value is None:
        return None
    ids = message_ids(value)  # "<addr>" has the shape of a msg-id; reuse it
    address = ids[0][1:-1] if ids else value.strip().strip("<>").strip()
    return address.lower()


def _is_daemon(address: str | None) -> bool:
    return bool(address) and _local_part(address or "").lower() in _DAEMON_LOCAL_PARTS


def _auto_submitted(parsed: ParsedEmail) -> str | None:
    value = parsed.header("auto-submitted")
    if value is None:
        return None
    token = value.split(";", 1)[0].strip().lower()
    return token if token and token != "no" else None


def _from_daemon(parsed: ParsedEmail) -> bool:
    return _is_daemon(parsed.from_addr) or bool(_DAEMON_FROM.search(parsed.header("from") or ""))


def _sent_by_mail_system(parsed: ParsedEmail, return_path: str | None) -> bool:
    return return_path == "" or _is_daemon(return_path) or _from_daemon(parsed)


def _looks_like_mail_system(parsed: ParsedEmail, return_path: str | None) -> bool:
    if _sent_by_mail_system(parsed, return_path):
        return True
    if parsed.header("x-failed-recipients") is not None or _auto_submitted(parsed):
        return True
    return bool(_BOUNCE_SUBJECT.search(parsed.subject)) and not _FORWARD_PREFIX.match(
        parsed.subject
    )


def _clean_addresses(addresses: Iterable[str]) -> list[str]:
    out: dict[str, None] = {}
    for address in addresses:
        address = address.strip().strip("<>").strip().lower()
        if _ADDRESS.match(address):
            out[address] = None
    return list(out)


# --- multipart/report --------------------------------------------------------


def _report(message: Message) -> tuple[Message, str] | None:
    """The message's own report part and its report type, if any.

    Only the message's own parts count: a client who forwards a bounce as an
    attachment sent a normal email (``own_parts`` does not enter attached
    messages). Some MTAs (McAfee, anonymising tools) send a ``message/delivery-status``
    part without the ``multipart/report`` wrapper or with a garbled
    report-type; the status part is what makes a DSN, so it counts too.
    """
    status_part_seen = False
    for part in own_parts(message):
        content_type = part.get_content_type()
        if content_type == "multipart/report":
            report_type = str(part.get_param("report-type") or "").strip().lower()
            if report_type in {"delivery-status", "feedback-report", "disposition-notification"}:
                return part, report_type
        status_part_seen = status_part_seen or content_type == "message/delivery-status"
    return (message, "delivery-status") if status_part_seen else None


def _status_blocks(report: Message) -> list[Message]:
    blocks: list[Message] = []
    for part in own_parts(report):
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            blocks += [block for block in payload if isinstance(block, Message)]
        elif isinstance(payload, str):
            # Encoded or unparsed: the fields are header blocks separated by
            # blank lines (RFC 3464 2.1).
            decoded = part.get_payload(decode=True)
            text = decoded if isinstance(decoded, bytes) else b""
            for chunk in re.split(r"\r?\n\s*\r?\n", text.decode("utf-8", "replace")):
                if chunk.strip():
                    blocks.append(parse_header_block(chunk.strip() + "\n"))
    return blocks


def _dsn_address(value: str) -> str:
    # "rfc822; user@example.com" (address-type; address, RFC 3464 2.3.2)
    return value.split(";", 1)[-1].strip()


@dataclass
class _DsnResult:
    failed: list[str] = field(default_factory=list)
    delayed: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)


def _parse_dsn(report: Message) -> _DsnResult:
    result = _DsnResult()
    for block in _status_blocks(report):
        # Original-Recipient is the address as we sent it; Final-Recipient may
        # be a rewritten one (aliases, forwarding), useless for matching.
        recipient = block.get("original-recipient") or block.get("final-recipient")
        if recipient is None:
            continue  # the per-message block
        address = _dsn_address(str(recipient))
        action = str(block.get("action", "")).strip().lower()
        status = str(block.get("status", "")).strip()
        if action == "failed" or status.startswith("5"):
            result.failed.append(address)
        elif action == "delayed" or status.startswith("4"):
            result.delayed.append(address)
        elif action in {"delivered", "relayed", "expanded"} or status.startswith("2"):
            result.delivered.append(address)
        else:
            result.failed.append(address)  # a recipient block says something failed
    return result


# --- the bounced message -------------------------------------------------------

_RETURNED_HEADER_TYPES = {"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"}
_RETURNED_MESSAGE_TYPES = {"message/rfc822", "message/global"}
_MESSAGE_ID_LINE = re.compile(r"^\s*Message-Id:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)


def _original_message_id(parsed: ParsedEmail, report: Message | None) -> str | None:
    """Message-ID of the email that bounced.

    From the returned headers (text/rfc822-headers) or returned message
    (message/rfc822) of the report; failing that, from a returned message
    attached to a non-standard bounce; failing that, from a ``Message-ID:``
    line in the bounce text, which is where Exim, qmail and others quote the
    returned message (the bounce's own headers are not in its body).
    """
    for source in (report, parsed.message):
        if source is None:
            continue
        for part in own_parts(source):
            content_type = part.get_content_type()
            headers: Message | None = None
            if content_type in _RETURNED_MESSAGE_TYPES or (
                content_type in _RETURNED_HEADER_TYPES and part.is_multipart()
            ):
                payload = part.get_payload()
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    headers = payload[0]
            elif content_type in _RETURNED_HEADER_TYPES:
                decoded = part.get_payload(decode=True)
                data = decoded if isinstance(decoded, bytes) else b""
                headers = parse_header_block(data.decode("utf-8", "replace"))
            if headers is not None and headers.get("message-id") is not None:
                found = normalize_message_id(str(headers.get("message-id")))
                if found:
                    return found
    match = _MESSAGE_ID_LINE.search(parsed.text)
    return normalize_message_id(match.group(1)) if match else None


# --- flufl.bounce ----------------------------------------------------------------


def _flufl_failures(message: Message) -> tuple[set[str], set[str]]:
    """(temporary, permanent) addresses found by flufl.bounce.

    ``all_failures`` stops with the exception of the first detector that raises (several
    do on 8-bit headers or a missing From). flufl.bounce offers no public way to run its
    detectors one by one, so such a message counts as "no addresses found" and the
    classifier's other signals (a DSN report, ``X-Failed-Recipients``, a mail system's
    bounce subject) decide."""
    # Imported on first use: only mail that looks like a mail system's gets here, and the
    # package with its detectors' patterns costs ~0.05 s CPU at every start otherwise.
    import flufl.bounce

    try:
        temporary, permanent = flufl.bounce.all_failures(message)
    except Exception:  # noqa: BLE001 - detector bug on odd input
        return set(), set()
    return _decode_all(temporary), _decode_all(permanent)


def _decode_all(addresses: Iterable[bytes | str]) -> set[str]:
    return {
        item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        for item in addresses
    }


# --- auto-replies ----------------------------------------------------------------

# Headers whose mere presence (with any value but "no") marks automatic mail.
_AUTO_REPLY_HEADERS = {
    "x-autoreply": "X-Autoreply",
    "x-autorespond": "X-Autorespond",
    "x-autoreply-from": "X-AutoReply-From",
    "x-mail-autoreply": "X-Mail-Autoreply",
    "x-autogenerated": "X-Autogenerated",
}
_BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}

# Vacation-style subjects, many languages. On their own they prove nothing (a
# client may well write "Out of office hours support request"), so they count
# only with one of the weaker header signals below.
_VACATION_SUBJECT = re.compile(
    r"out of (the )?office|automatic reply|auto[- ]?reply|autoreply|^\s*auto:"
    r"|automatic response|auto[- ]?response|away from (the )?office|on vacation|vacation reply"
    r"|abwesenheitsnotiz|abwesenheit|automatische antwort|autosvar|automatisk svar"
    r"|fr[åa]nvaro|frav[æa]r|r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica"
    r"|fuera de la oficina|risposta automatica|fuori sede|automatisch antwoord|afwezig"
    r"|automatyczna odpowied[źz]|odpowied[źz] automatyczna|resposta autom[áa]tica"
    r"|automaattinen vastaus|poissa|automatick[áa] odpov[ěe]d|автоматический ответ"
    r"|自動応答|自動返信|不在|自动回复",
    re.IGNORECASE,
)
_VACATION_MAILER = re.compile(
    r"vacation|out of office|auto[- ]?reply|autoresponder|abwesenheit", re.IGNORECASE
)


def _vacation_header_agreement(parsed: ParsedEmail) -> str | None:
    """A header that, with a vacation subject, confirms an auto-reply.

    ``X-MS-Exchange-Inbox-Rules-Loop`` is set by Exchange on mail a mailbox
    rule generated (including its out-of-office replies); Apple's iCloud sets
    ``X-Apple-Action: VACATION``; a vacation program names itself in X-Mailer.
    """
    if parsed.header("x-ms-exchange-inbox-rules-loop") is not None:
        return "X-MS-Exchange-Inbox-Rules-Loop"
    if "vacation" in (parsed.header("x-apple-action") or "").lower():
        return "X-Apple-Action: VACATION"
    for name in ("x-mailer", "user-agent"):
        if _VACATION_MAILER.search(parsed.header(name) or ""):
            return name.title()
    return None


def _auto_reply_reason(parsed: ParsedEmail, return_path: str | None) -> str | None:
    token = _auto_submitted(parsed)
    if token:
        return f"Auto-Submitted: {token}"
    for name, label in _AUTO_REPLY_HEADERS.items():
        value = parsed.header(name)
        if value is not None and value.strip().lower() not in {"no", "false", "0"}:
            return label
    for name in ("precedence", "x-precedence"):
        precedence = (parsed.header(name) or "").strip().lower()
        if precedence in _BULK_PRECEDENCE:
            return f"{name.title()}: {precedence}"
    suppress = parsed.header("x-auto-response-suppress")
    if suppress is not None:
        values = {item.strip().lower() for item in suppress.split(",") if item.strip()}
        if values - {"none"}:
            return f"X-Auto-Response-Suppress: {suppress.strip()}"
    for name, label in (("list-id", "List-Id"), ("list-unsubscribe", "List-Unsubscribe")):
        if parsed.header(name) is not None:
            return label
    if return_path == "":
        return "empty return path"
    if _is_daemon(return_path):
        return "MAILER-DAEMON return path"
    if _from_daemon(parsed):
        # Postmaster notices, delivery reports without a failure: automatic.
        return "MAILER-DAEMON sender"
    if _VACATION_SUBJECT.search(parsed.subject):
        agreeing = _vacation_header_agreement(parsed)
        if agreeing:
            return f"vacation subject + {agreeing}"
    return None


# --- the classification --------------------------------------------------------


def _bounce(
    reason: str,
    parsed: ParsedEmail,
    report: Message | None,
    addresses: Iterable[str],
    permanent: bool | None,
) -> Classification:
    return Classification(
        kind="bounce",
        reason=reason,
        bounced_addresses=_clean_addresses(addresses),
        permanent=permanent,
        original_message_id=_original_message_id(parsed, report),
    )


def _permanence(temporary: Iterable[str], permanent: Iterable[str]) -> bool | None:
    if list(permanent):
        return True
    if list(temporary):
        return False
    return None


def classify(parsed: ParsedEmail, envelope_from: str | None) -> Classification:
    """Classify ``parsed`` as ``normal``, ``auto_reply`` or ``bounce``.

    ``envelope_from`` is the SMTP MAIL FROM ("" or "<>" for the null sender),
    or None when unknown (mail fetched over IMAP): the Return-Path header is
    used instead. Never raises for any ``ParsedEmail``.
    """
    message = parsed.message
    return_path = _return_path(parsed, envelope_from)

    found = _report(message)
    report = found[0] if found else None
    report_type = found[1] if found else ""
    if report_type == "feedback-report":
        return Classification(kind="auto_reply", reason="ARF feedback report")
    if report_type == "disposition-notification":
        return Classification(kind="auto_reply", reason="MDN (disposition notification)")
    if report is not None and report_type == "delivery-status":
        dsn = _parse_dsn(report)
        if dsn.failed or dsn.delayed:
            return _bounce("DSN", parsed, report, dsn.failed + dsn.delayed,
                           _permanence(dsn.delayed, dsn.failed))
        if dsn.delivered:
            return Classification(kind="auto_reply", reason="DSN (delivered)")
        temporary, permanent = _flufl_failures(message)
        return _bounce("DSN", parsed, report, sorted(permanent | temporary),
                       _permanence(temporary, permanent))

    failed_header = parsed.header_all("x-failed-recipients")
    if failed_header:
        # Exim's header lists exactly the recipients that failed permanently.
        addresses = [a for value in failed_header for a in value.split(",")]
        return _bounce("X-Failed-Recipients", parsed, report, addresses, True)

    mail_system = _looks_like_mail_system(parsed, return_path)
    if mail_system:
        temporary, permanent = _flufl_failures(message)
        if temporary or permanent:
            return _bounce("bounce report (flufl.bounce)", parsed, report,
                           sorted(permanent) + sorted(temporary - permanent),
                           _permanence(temporary, permanent))
        if _sent_by_mail_system(parsed, return_path) and _BOUNCE_SUBJECT.search(parsed.subject):
            return _bounce("bounce subject from a mail system", parsed, report, [], None)

    reason = _auto_reply_reason(parsed, return_path)
    if reason:
        return Classification(kind="auto_reply", reason=reason)
    return Classification(kind="normal", reason="no automatic-mail signal")

