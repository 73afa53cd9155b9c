"""Make untrusted HTML and header values safe to reuse.

``sanitize_html`` is for HTML bodies written by senders that postdesk shows
again (quoted in notifications, digests). ``header_safe`` is for any text that
ends up in a header of an email postdesk writes (subjects, display names),
where a CR or LF would let the sender inject headers of their own.
"""

from __future__ import annotations

import re

import nh3

# nh3's default tag and attribute lists (ammonia's) already exclude scripts,
# styles, forms, iframes and every on* handler; only the URL schemes are
# narrowed: an email body needs web links, mail and phone links, and cid: for
# the inline images that travel inside the same message (RFC 2392).
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid"}

# noreferrer as well as noopener: a link in a ticket should not tell the
# target site which internal page it was clicked from.
_LINK_REL = "noopener noreferrer"


def _drop_remote_image_sources(tag: str, attribute: str, value: str) -> str | None:
    # A remote <img> is how newsletters and trackers learn when and where a
    # message was read; when staff read a client's HTML quoted by postdesk,
    # that would leak their reading times. Inline cid: images are the
    # message's own content and stay.
    if tag == "img" and attribute == "src" and not value.strip().lower().startswith("cid:"):
        return None
    return value


def sanitize_html(html: str, *, allow_remote_images: bool = False) -> str:
    """Return ``html`` with everything but harmless formatting removed.

    Scripts, styles, event handlers, forms, frames and unknown tags go (nh3
    defaults); links get ``rel="noopener noreferrer"``; URLs are limited to
    http(s), mailto, tel and cid. Images keep only ``cid:`` sources unless
    ``allow_remote_images`` is set, because remote images are read receipts.
    """
    return nh3.clean(
        html,
        url_schemes=_URL_SCHEMES,
        link_rel=_LINK_REL,
        attribute_filter=None if allow_remote_images else _drop_remote_image_sources,
    )


# Line breaks in every spelling Python or a mail client may honour: CR, LF,
# NEL, and the Unicode line and paragraph separators.
_LINE_BREAKS = re.compile(r"[\r\n\x85\u2028\u2029]+")
# Remaining C0 controls (TAB included: it folds oddly), DEL and C1 controls.
_OTHER_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def header_safe(value: str) -> str:
    """Return ``value`` fit for one line of an outgoing header.

    Line breaks become a single space (so words stay apart but no new header
    line can start), NUL, TAB and every other control character are removed,
    and surrounding whitespace is stripped.
    """
    value = _LINE_BREAKS.sub(" ", value)
    value = value.replace("\t", " ")
    value = _OTHER_CONTROLS.sub("", value)
    return value.strip()
