"""Replies shaped as Gmail, Outlook and Apple Mail send them: new text, then the quoted
history, as text and HTML alternatives, with attachments (and inline images) as those
clients attach them."""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import make_msgid

from tests.support import make_email

# (filename, content type, bytes) of a file; an inline image adds its Content-ID.
File = tuple[str, str, bytes]


def _quote_text(client: str, quoted: str) -> tuple[str, str]:
    lines = "\n".join("> " + line for line in quoted.splitlines())
    if client == "gmail":
        return (f"\n\nOn Mon, 23 Nov 2026 at 10:00, Acme Digital Support "
                f"<support@desk.example> wrote:\n{lines}\n",
                f'<div class="gmail_quote"><div class="gmail_attr">On Mon, 23 Nov 2026 at '
                f'10:00, Acme Digital Support wrote:</div><blockquote class="gmail_quote">'
                f"{html.escape(quoted)}</blockquote></div>")
    if client == "outlook":
        return ("\n\n-----Original Message-----\nFrom: Acme Digital Support "
                "<support@desk.example>\nSent: Monday, November 23, 2026 10:00 AM\n"
                f"Subject: Re: ticket\n\n{quoted}\n",
                '<div id="appendonsend"></div><hr style="display:inline-block;width:98%">'
                '<div id="divRplyFwdMsg"><b>From:</b> Acme Digital Support<br><b>Sent:</b> '
                f"Monday, November 23, 2026 10:00 AM</div><div>{html.escape(quoted)}</div>")
    return (f"\n\n> On 23 Nov 2026, at 10:00, Acme Digital Support "
            f"<support@desk.example> wrote:\n>\n{lines}\n",
            f'<blockquote type="cite">On 23 Nov 2026, at 10:00, Acme Digital Support '
            f"wrote:<br>{html.escape(quoted)}</blockquote>")


def reply(client: str, *, sender: str, subject: str, text: str, quoted: str = "",
          in_reply_to: str | None = None, files: list[File] = (),  # type: ignore[assignment]
          inline: list[tuple[str, str, bytes, str]] = (),  # type: ignore[assignment]
          to: str = "support@desk.example") -> EmailMessage:
    """A ``client`` ("gmail", "outlook", "apple") email: ``text`` above the quoted
    ``quoted``; ``inline`` images are (filename, type, bytes, content-id) shown by the
    HTML through ``cid:``."""
    msg = make_email(sender=sender, to=to, subject=subject, body="x",
                     in_reply_to=in_reply_to, references=in_reply_to,
                     message_id=make_msgid(domain=sender.split("@")[1]))
    quote_text, quote_html = _quote_text(client, quoted) if quoted else ("", "")
    images = "".join(f'<img src="cid:{cid}" alt="{name}">' for name, _, _, cid in inline)
    msg.set_content(text + quote_text)
    msg.add_alternative(f"<html><body><div>{html.escape(text)}</div>{images}"
                        f"{quote_html}</body></html>", subtype="html")
    if inline:
        html_part = msg.get_payload()[1]
        for name, ctype, data, cid in inline:
            maintype, subtype = ctype.split("/")
            html_part.add_related(data, maintype=maintype, subtype=subtype, cid=f"<{cid}>",
                                  filename=name, disposition="inline")
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg
