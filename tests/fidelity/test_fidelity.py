"""Fidelity: damaged and unusual real-world mail is read as its sender wrote it.

Each fixture in fixtures/ is one class of damage (see fixtures/README.md); its
expected sender, display name, subject, body and attachments are in
expected.json. The named tests below state each acceptance point on its own.
"""

from __future__ import annotations

import binascii
import json
from pathlib import Path
from typing import Any

import pytest

from postdesk.mail.parse import ParsedEmail, parse_email

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
EXPECTED: dict[str, dict[str, Any]] = json.loads((HERE / "expected.json").read_text("utf-8"))


def parsed(name: str) -> ParsedEmail:
    return parse_email((FIXTURES / name).read_bytes())


def payload(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_read_as_its_sender_wrote_it(name: str) -> None:
    expected = EXPECTED[name]
    email = parsed(name)
    assert (email.from_addr, email.from_name, email.subject, email.text) == (
        expected["from_addr"], expected["from_name"], expected["subject"], expected["text"])
    assert [(a.filename, a.size) for a in email.attachments] == [
        (filename, size) for filename, size, _ in expected["attachments"]]
    for attachment, (_, _, payload_file) in zip(email.attachments, expected["attachments"],
                                                strict=True):
        if payload_file:
            assert attachment.payload == payload(payload_file)
    for defect in expected["defects"]:
        assert defect in email.defects


# --- class 1: damaged header blocks -----------------------------------------------------

def test_the_first_valid_from_wins_and_the_other_is_a_recorded_defect() -> None:
    email = parsed("1a-two-from-first-garbage.eml")
    assert (email.from_addr, email.from_name) == ("alice@client.example", "Alice Example")
    assert "2 From: header fields; the sender is taken from number 2" in email.defects


def test_an_unindented_continuation_line_is_joined_to_its_subject() -> None:
    email = parsed("1b-unindented-continuation.eml")
    assert email.from_addr == "bob@client.example"
    assert email.subject.endswith("consulting hours that were billed in October")
    assert "From:" not in email.text


def test_lines_before_the_header_fields_are_skipped_and_recorded() -> None:
    email = parsed("1c-leading-junk-line.eml")
    assert (email.from_addr, email.subject) == ("carol@client.example", "VPN certificate expired")
    assert email.message_id == "<junk-1@client.example>"
    assert "2 line(s) before the header fields were skipped" in email.defects


def test_a_mere_body_with_a_colon_is_not_taken_for_headers() -> None:
    # Nothing is invented: text that only looks like a header here and there stays body.
    email = parse_email(b"Hello team,\nNote: the server is down.\nRegards\n")
    assert email.from_addr is None
    assert "Note: the server is down." in email.text


def test_a_body_line_after_the_headers_is_not_joined_when_no_header_follows() -> None:
    email = parse_email(b"From: a@client.example\nSubject: Hi\nbody without a blank line\n")
    assert email.subject == "Hi"
    assert "body without a blank line" in email.text


# --- class 2: undeclared 8-bit headers --------------------------------------------------

def test_a_raw_gb2312_subject_decodes_exactly() -> None:
    assert parsed("2a-raw-gb2312-subject.eml").subject == "转发：整体提升企业服务水平"


def test_a_raw_shift_jis_subject_and_display_name_decode_exactly() -> None:
    email = parsed("2b-raw-shift-jis-subject-and-name.eml")
    assert (email.subject, email.from_name, email.from_addr) == (
        "ツール", "ツール", "tool@client.example")


def test_a_raw_latin1_filename_keeps_its_umlaut() -> None:
    [attachment] = parsed("2c-raw-latin1-filename.eml").attachments
    assert attachment.filename == "Hofjägeralle 1.jpg"


def test_a_charset_declared_elsewhere_in_the_email_is_preferred() -> None:
    # Big5 text is too short for a detector; the body's declared charset names it.
    raw = (b"From: a@client.example\nSubject: " + "國科會".encode("big5")
           + b"\nContent-Type: text/plain; charset=big5\n\n" + "內容".encode("big5") + b"\n")
    email = parse_email(raw)
    assert (email.subject, email.text) == ("國科會", "內容\n")


def test_short_latin_bytes_are_not_mistaken_for_a_double_byte_charset() -> None:
    email = parse_email(b"From: a@client.example\nSubject: \xc5re\n\nx\n")
    assert email.subject == "Åre"


# --- class 3: ISO-2022-JP extension characters ------------------------------------------

def test_iso_2022_jp_extension_characters_survive_everywhere() -> None:
    email = parsed("3a-iso-2022-jp-extension-chars.eml")
    assert "①" in email.subject and "①" in email.text and "②" in email.text
    assert email.from_name == "髙橋"
    assert [a.filename for a in email.attachments] == ["報告書①.txt"]


# --- class 4: lenient transfer decoding -------------------------------------------------

def test_a_headless_uuencoded_attachment_decodes_to_its_original_bytes() -> None:
    email = parsed("4a-uuencode-without-begin.eml")
    [attachment] = email.attachments
    assert attachment.payload == payload("4a-uuencode-without-begin.payload")
    assert "application/octet-stream: uuencoded data without a begin line" in email.defects


def test_base64_of_invalid_length_decodes_what_is_decodable() -> None:
    email = parsed("4b-base64-invalid-length.eml")
    [attachment] = email.attachments
    assert attachment.payload == payload("4b-base64-invalid-length.payload")
    assert any("base64 of invalid length" in defect for defect in email.defects)


# --- class 5: HTML to text ---------------------------------------------------------------

def test_text_after_the_html_end_tag_is_kept() -> None:
    email = parsed("5a-html-text-after-end-tag.eml")
    assert email.text.endswith("reply to this address to reach the desk.")


def test_cjk_text_and_split_words_get_no_spaces_at_inline_boundaries() -> None:
    text = parsed("5b-html-cjk-spans.eml").text
    assert "整体提升企业服务水平" in text
    assert "サーバーが停止しました。" in text
    assert "Example words" in text


# --- real-world mail (tests/fidelity/real/README.md says where each is from) ------------

REAL = HERE / "real"
REAL_EXPECTED: dict[str, dict[str, Any]] = json.loads(
    (REAL / "expected.json").read_text("utf-8"))


@pytest.mark.parametrize("name", sorted(REAL_EXPECTED))
def test_real_world_mail_is_read_as_its_upstream_tests_expect(name: str) -> None:
    expected = REAL_EXPECTED[name]
    email = parse_email((REAL / name).read_bytes())
    assert (email.from_addr, email.from_name, email.subject) == (
        expected["from_addr"], expected["from_name"], expected["subject"])
    assert [(a.filename, a.size) for a in email.attachments] == [
        tuple(pair) for pair in expected["attachments"]]
    for defect in expected["defects"]:
        assert defect in email.defects
    # Nothing of the header block is left in the body.
    assert "Message-ID:" not in email.text and "Received:" not in email.text


def test_a_uuencoded_file_pasted_into_the_body_becomes_an_attachment() -> None:
    # What Lotus Notes sends: the file uuencoded after the text, begin line and all.
    data = payload("4a-uuencode-without-begin.payload")
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45))
    raw = (b"From: a@client.example\nSubject: Photo\n\nPhoto below.\n\nbegin 644 door.jpg\n"
           + lines + b"`\nend\n")
    email = parse_email(raw)
    assert [(a.filename, a.content_type, a.payload) for a in email.attachments] == [
        ("door.jpg", "image/jpeg", data)]
    assert email.text.strip() == "Photo below."
