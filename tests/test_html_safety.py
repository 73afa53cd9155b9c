"""ingest.html_safety: sender HTML and header values made safe to reuse."""

from __future__ import annotations

import pytest

from postdesk.mail.html_safety import header_safe, sanitize_html


def test_scripts_styles_and_handlers_are_removed() -> None:
    cleaned = sanitize_html(
        '<p onclick="steal()">Hi<script>alert(1)</script><style>p{display:none}</style>'
        '<img src="x" onerror="alert(2)"><iframe src="https://evil.example"></iframe>'
        '<form action="https://evil.example"><input name="pw"></form></p>'
    )
    for forbidden in ("script", "alert", "onclick", "onerror", "style", "iframe", "form",
                      "input", "display:none"):
        assert forbidden not in cleaned
    assert cleaned.startswith("<p>Hi")


@pytest.mark.parametrize(
    "href",
    ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
     "data:text/html;base64,PHNjcmlwdD4=", "vbscript:msgbox(1)"],
)
def test_dangerous_link_schemes_are_dropped(href: str) -> None:
    cleaned = sanitize_html(f'<a href="{href}">click</a>')
    assert "href" not in cleaned and "click" in cleaned


def test_links_get_noopener() -> None:
    assert sanitize_html('<a href="https://client.example/page">page</a>') == (
        '<a href="https://client.example/page" rel="noopener noreferrer">page</a>'
    )
    assert 'href="mailto:a@b.example"' in sanitize_html('<a href="mailto:a@b.example">m</a>')


def test_formatting_is_kept() -> None:
    html = "<p><b>bold</b> <i>it</i> <u>u</u></p><ul><li>one</li></ul><blockquote>q</blockquote>"
    assert sanitize_html(html) == html
    assert sanitize_html("<table><tr><td>a</td></tr></table>") == (
        "<table><tbody><tr><td>a</td></tr></tbody></table>"
    )


def test_inline_cid_images_stay_remote_images_do_not() -> None:
    assert sanitize_html('<img src="cid:logo@x.example" alt="logo">') == (
        '<img src="cid:logo@x.example" alt="logo">'
    )
    tracked = '<img src="https://tracker.example/p.gif" width="1" height="1">'
    assert "tracker" not in sanitize_html(tracked)
    assert "tracker" in sanitize_html(tracked, allow_remote_images=True)
    assert "data:" not in sanitize_html('<img src="data:image/png;base64,AAAA">')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Hello\r\nBcc: victim@example.org", "Hello Bcc: victim@example.org"),
        ("a\rb\nc", "a b c"),
        ("nul\x00byte", "nulbyte"),
        ("tab\there", "tab here"),
        ("uni\u2028code\u2029breaks\x85", "uni code breaks"),
        ("esc\x1b[31m and del\x7f and c1\x9b", "esc[31m and del and c1"),
        ("  [PD-1042] Ünïcödé stays  ", "[PD-1042] Ünïcödé stays"),
        ("\r\n", ""),
    ],
)
def test_header_safe(value: str, expected: str) -> None:
    assert header_safe(value) == expected
    assert "\r" not in header_safe(value) and "\n" not in header_safe(value)
