"""ingest.parse and ingest.filenames: raw bytes in, a ParsedEmail out, never a crash."""

from __future__ import annotations

import csv
import email
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postdesk.mail.filenames import MAX_FILENAME_LENGTH, clean_filename
from postdesk.mail.parse import (
    ParsedEmail,
    UnparseableEmail,
    decode_bytes,
    html_to_text,
    message_ids,
    normalize_message_id,
    parse_email,
)
from tests.corpus import corpus_dir, manifest_files, read, requires_corpus
from tests.support import examples

FIXTURES = Path(__file__).parent / "fixtures" / "mail"


def fixture(name: str) -> ParsedEmail:
    return parse_email((FIXTURES / name).read_bytes())


def all_strings(parsed: ParsedEmail) -> list[str]:
    values = [parsed.subject, parsed.text, parsed.html or "", parsed.from_name or ""]
    values += [value for _, value in parsed.headers.items]
    values += [attachment.filename for attachment in parsed.attachments]
    values += parsed.defects + parsed.to + parsed.cc + parsed.reply_to + parsed.references
    return values


def assert_storable(parsed: ParsedEmail) -> None:
    for value in all_strings(parsed):
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogates


# --- hand-written fixtures ---------------------------------------------------------


def test_plain_client_email() -> None:
    parsed = fixture("plain_client.eml")
    assert parsed.message_id == "<CAF1234@mail.client.example>"
    assert parsed.in_reply_to is None and parsed.references == []
    assert (parsed.from_name, parsed.from_addr) == ("Alice Client", "alice@client.example")
    assert parsed.to == ["support@desk.example"] and parsed.cc == ["bob@client.example"]
    assert parsed.subject == "Checkout page shows error 500"
    assert parsed.date == datetime(2026, 11, 12, 8, 15, tzinfo=UTC)
    assert parsed.text.startswith("Hello,\n\nsince this morning")
    assert parsed.html is None and parsed.attachments == []
    assert parsed.header("message-id") == "<CAF1234@mail.client.example>"
    assert parsed.headers.header("MESSAGE-ID") == parsed.header("Message-Id")
    assert parsed.header("x-missing") is None and parsed.header_all("x-missing") == []
    assert "subject" in parsed.headers
    assert isinstance(parsed.message, email.message.Message)


def test_gmail_reply_threading_fields() -> None:
    parsed = fixture("gmail_reply.eml")
    assert parsed.in_reply_to == "<pd.1042.3@desk.example>"
    assert parsed.references == ["<CAF1234@mail.client.example>", "<pd.1042.3@desk.example>"]
    assert parsed.text.startswith("Thanks, it works again!")
    assert parsed.html is not None and "gmail_quote" in parsed.html


def test_html_only_body_gives_text_and_decoded_quoted_name() -> None:
    parsed = fixture("html_only.eml")
    assert parsed.from_name == "Jörg Müller"  # encoded-words inside quotes, as clients send
    assert parsed.subject == "Rechnung für November"
    assert parsed.html is not None and "<script>" in parsed.html  # raw; sanitising is separate
    assert "die Rechnung für November fehlt & der Link hier geht nicht." in parsed.text
    assert "120 €" in parsed.text
    assert "alert" not in parsed.text and "color: red" not in parsed.text


def test_html_to_text_fallback_converter() -> None:
    html = "<p>One &amp; two</p><script>evil()</script><div>three<br>four</div>"
    for use_library in (True, False):
        lines = [line.strip() for line in html_to_text(html, use_library=use_library).split("\n")]
        assert [line for line in lines if line] == ["One & two", "three", "four"]


def test_forwarded_message_is_an_attachment_not_body() -> None:
    parsed = fixture("forward_rfc822.eml")
    assert parsed.text == "Please see the forwarded message.\n"
    [forward] = parsed.attachments
    assert forward.is_rfc822 and forward.filename == "forwarded.eml"
    assert forward.content_type == "message/rfc822"
    inner = email.message_from_bytes(forward.payload)
    assert inner["Message-ID"] == "<inv-77@vendor.example>"
    # The forwarded message's own PDF travels inside it, not as a second file.
    assert [part.get_filename() for part in inner.walk() if part.get_filename()] == [
        "invoice.pdf"
    ]


def test_winmail_dat_is_flagged_tnef() -> None:
    parsed = fixture("winmail.eml")
    [tnef] = parsed.attachments
    assert tnef.is_tnef and tnef.filename == "winmail.dat"
    assert tnef.payload.startswith(b"\x78\x9f\x3e\x22")  # base64 decoded to the raw bytes


def test_attachment_names_are_cleaned_and_payloads_decoded() -> None:
    parsed = fixture("attachments.eml")
    by_name = {attachment.filename: attachment for attachment in parsed.attachments}
    assert set(by_name) == {
        "attachment-1.png",  # unnamed inline image: deterministic name from its type
        "passwd",  # ../../etc/passwd
        "evil .dll",  # RFC 2231 ..\..\windows\system32\evil\r\n.dll
        "Rechnung Nächster Monat.pdf",  # RFC 2047 in the name parameter
        "attachment-5.zip",
        "hidden.txt",  # leading dot removed
    }
    image = by_name["attachment-1.png"]
    assert image.inline and image.content_id == "logo123@evil.example"
    assert image.payload.startswith(b"\x89PNG")
    assert by_name["passwd"].payload.startswith(b"root:x:0:0")
    assert by_name["evil .dll"].payload.startswith(b"MZ")
    assert not by_name["passwd"].inline
    # A named inline text part is a file the sender attached, not the body.
    assert parsed.text == "Look:" and "named inline text" not in parsed.text


def test_parsing_is_deterministic() -> None:
    raw = (FIXTURES / "attachments.eml").read_bytes()
    first, second = parse_email(raw), parse_email(raw)
    assert [(a.filename, a.payload) for a in first.attachments] == [
        (a.filename, a.payload) for a in second.attachments
    ]


def test_iso_2022_jp() -> None:
    parsed = fixture("iso2022jp.eml")
    assert parsed.subject == "お問い合わせの件"
    assert parsed.from_name == "山田太郎"
    assert parsed.text == "お世話になっております。\n請求書が届いておりません。\n"


def test_cp1251() -> None:
    parsed = fixture("cp1251.eml")
    assert parsed.subject == "Проблема с оплатой"
    assert parsed.text.startswith("Здравствуйте!\nОплата картой не проходит.")


def test_broken_headers_degrade_to_readable_text() -> None:
    parsed = fixture("broken_headers.eml")
    assert parsed.subject == "Broken base64 é and café and raw café"
    assert parsed.from_name == "José" and parsed.from_addr == "jose@client.example"
    assert parsed.date is None and any("date" in defect.lower() for defect in parsed.defects)
    assert parsed.message_id is None  # blank Message-ID
    assert parsed.in_reply_to == "<orig-1@desk.example>"
    assert parsed.references == ["<a@b>", "<c@d>"]  # junk skipped, duplicates dropped
    assert parsed.text == "Café crème brûlée \ufffd one broken byte\n"  # bogus charset
    assert_storable(parsed)


@pytest.mark.parametrize(
    ("raw_subject", "expected"),
    [
        (b"=?utf-8?B?QnJva2VuIQ=x?= tail", "Broken! tail"),  # bad base64 padding
        (b"=?x-unknown?Q?caf=E9?=", "café"),  # unknown charset
        (b"=?iso-2022-jp?B?GyRCJygnJS1iGyhCNDEgGyRCJ2AnZBsoQiAyOC4wOS4yMDE2?=",
         "ЖД№41 от 28.09.2016"),  # NEC extension (row 13) outside strict ISO-2022-JP
        (b"=?utf-8?Q?unterminated", "=?utf-8?Q?unterminated"),
        (b"raw \xe4\xbd\xbf utf8", "raw 使 utf8"),  # 8-bit header
        (b"raw latin \xe9t\xe9", "raw latin été"),  # 8-bit, not UTF-8
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # adjacent words join
        (b"Line\r\n folded\r\n\tsubject", "Line folded subject"),  # CR/LF removed
        (b"=?gb2312?B?ztKw0b61zbfArb380Kk=?=", "我把镜头拉近些"),  # GBK in a gb2312 label
    ],
)
def test_subject_decoding_is_best_effort(raw_subject: bytes, expected: str) -> None:
    parsed = parse_email(b"From: a@b.example\r\nSubject: " + raw_subject + b"\r\n\r\nbody\r\n")
    assert parsed.subject == expected


def test_decode_bytes_falls_back_without_raising() -> None:
    assert decode_bytes("café".encode("cp1252"), "no-such-charset") == "café"
    assert decode_bytes(b"\x93quoted\x94", "iso-8859-1") == "\u201cquoted\u201d"
    assert decode_bytes(b"abc", "base64") == "abc"  # a codec, but not a text encoding
    assert decode_bytes(b"\xff\xfe\xfa", "utf-8") == "\ufffd\ufffd\ufffd"


def test_message_id_helpers() -> None:
    assert normalize_message_id("  <a@b>  ") == "<a@b>"
    assert normalize_message_id("bare@host") == "<bare@host>"
    assert normalize_message_id("   ") is None and normalize_message_id(None) is None
    assert message_ids("<a@b>\r\n <c\r\n @d> junk <> <a@b>") == ["<a@b>", "<c@d>"]


@pytest.mark.parametrize("raw", [b"", b"   \r\n\t ", b"\x00\x01\x02\x03" * 100])
def test_not_an_email_is_unparseable(raw: bytes) -> None:
    with pytest.raises(UnparseableEmail):
        parse_email(raw)


def test_binary_junk_without_headers_is_unparseable() -> None:
    junk = bytes((i * 97 + 13) % 256 for i in range(4096))  # includes NULs
    with pytest.raises(UnparseableEmail) as info:
        parse_email(junk)
    assert "binary" in info.value.reason


def test_headerless_text_is_kept_as_body() -> None:
    parsed = parse_email(b"Hi folks,\n\nthis body lost its headers.\n")
    assert parsed.text == "Hi folks,\n\nthis body lost its headers.\n"
    assert parsed.from_addr is None and parsed.message_id is None
    assert "no header fields" in parsed.defects


def test_nul_bytes_never_reach_strings() -> None:
    parsed = parse_email(b"From: a\x00@b.example\r\nSubject: x\x00y\r\n\r\nbo\x00dy\r\n")
    assert parsed.subject == "xy" and parsed.text == "body\r\n"
    assert_storable(parsed)


# --- clean_filename ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\report.doc", "report.doc"),
        ("..", "fallback.bin"),
        ("...hidden", "hidden"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # bidi override removed
        ("a\r\n b.txt", "a b.txt"),
        ("dir/", "fallback.bin"),
        ("", "fallback.bin"),
        (None, "fallback.bin"),
        ("trailing dots. . .", "trailing dots"),
        ("zwj\u200dkept.txt", "zwj\u200dkept.txt"),
    ],
)
def test_clean_filename(name: str | None, expected: str) -> None:
    assert clean_filename(name, "fallback.bin") == expected


def test_clean_filename_limits_length_and_keeps_extension() -> None:
    long = clean_filename("x" * 300 + ".pdf", "f")
    assert len(long) == MAX_FILENAME_LENGTH and long.endswith(".pdf")
    assert len(clean_filename("y" * 300, "f")) == MAX_FILENAME_LENGTH
    assert clean_filename("", "") == "attachment"


# --- the corpus ----------------------------------------------------------------------

# Not emails at all: an Outlook .msg (OLE2 binary) file.
EXPECTED_UNPARSEABLE = {"spamscope-mail-parser/mail_outlook_1"}


@requires_corpus
def test_every_corpus_file_parses() -> None:
    unparseable = set()
    for relative in manifest_files():
        try:
            parsed = parse_email(read(relative))
        except UnparseableEmail:
            unparseable.add(relative)
            continue
        assert_storable(parsed)
        assert parsed.date is None or parsed.date.tzinfo is not None
        assert parsed.message_id is None or parsed.message_id.startswith("<")
    assert len(manifest_files()) > 1800
    assert unparseable == EXPECTED_UNPARSEABLE


@requires_corpus
def test_corpus_iso_2022_jp_and_cp1251() -> None:
    iso_2022 = parse_email(read("mikel-mail/multi_charset/japanese_iso_2022.eml"))
    assert iso_2022.subject == "まみむめも"
    japanese = parse_email(read("mimekit/messages/japanese.txt"))
    assert japanese.subject == "日本語メールテスト (testing Japanese emails)"
    assert "日本語が\n正常に" in japanese.text
    bulgarian = parse_email(read("otrs/sample_mails/test-email-8-bulgarian-cp1251.box"))
    assert "това е тестов отговор" in bulgarian.text
    assert "Путін" in parse_email(read("php-mime-mail-parser/m0021")).subject


@requires_corpus
def test_corpus_broken_encoded_word_subjects_are_readable() -> None:
    root = corpus_dir()
    assert root is not None
    with (root / "MANIFEST.csv").open(newline="", encoding="utf-8") as handle:
        tagged = [row[1] for row in csv.reader(handle)
                  if len(row) >= 3 and "broken-encoded-word" in row[2]]
    assert len(tagged) >= 15
    for relative in tagged:
        subject = parse_email(read(relative)).subject
        assert "=?" not in subject and "\ufffd" not in subject, (relative, subject)


@requires_corpus
def test_corpus_forwards_and_tnef() -> None:
    digest = parse_email(read("cpython-test_email/msg_02.txt"))
    assert [a.filename for a in digest.attachments if a.is_rfc822] == [
        "forwarded.eml", "forwarded-2.eml", "forwarded-3.eml", "forwarded-4.eml",
        "forwarded-5.eml",
    ]
    tnef = parse_email(read("mimekit/tnef/rich-text.eml"))
    assert [a.filename for a in tnef.attachments if a.is_tnef] == ["winmail.dat"]
    rfc2231 = parse_email(read("rt/emails/rfc2231-attachment-filename-continuations"))
    assert [a.filename for a in rfc2231.attachments] == ["新しいテキスト ドキュメント.txt"]


# --- fuzzing -------------------------------------------------------------------------


def _fuzz_seeds() -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))]
    files = manifest_files()
    # Small real messages only (a fuzz case must stay fast), spread over the
    # sources: every 12th file under 6 KB.
    small = [f for f in files if len(read(f)) < 6_000] if files else []
    seeds += [read(f) for f in small[::12]]
    return seeds


SEEDS = _fuzz_seeds()


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "truncate", "duplicate", "junk", "delete"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del data[position:]
        elif operation == "duplicate":
            # Repeat one header line (or any line) right after itself.
            start = data.rfind(b"\n", 0, position) + 1
            end = data.find(b"\n", position)
            line = bytes(data[start : (end + 1 if end >= 0 else len(data))])
            data[start:start] = line * draw(st.integers(1, 3))
        elif operation == "junk":
            junk = draw(st.one_of(
                st.binary(min_size=1, max_size=40),
                st.sampled_from([
                    b"\r\n", b"\n\n", b"=?utf-8?B?", b"?=", b"--", b"Content-Type: multipart/mixed"
                    b"; boundary=x\r\n", b"Content-Transfer-Encoding: base64\r\n", b"\x00",
                    b"charset=\"x-unknown\"", b"filename*0*=utf-8''%2e%2e%2f", b"\xff\xfe",
                ]),
            ))
            data[position:position] = junk
        elif operation == "delete" and data:
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


@settings(
    max_examples=examples(5000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_messages())
def test_fuzz_parse_never_raises_anything_else(raw: bytes) -> None:
    try:
        parsed = parse_email(raw)
    except UnparseableEmail:
        return
    assert_storable(parsed)
