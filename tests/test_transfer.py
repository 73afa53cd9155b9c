"""mail.transfer: lenient uudecode and base64, each alone."""

from __future__ import annotations

import base64
import binascii
import os

from postdesk.mail.transfer import decode_base64_lenient, decode_uu_lenient, split_uuencoded

DATA = os.urandom(200)
UU = b"".join(binascii.b2a_uu(DATA[i:i + 45]) for i in range(0, len(DATA), 45))


def test_uuencode_with_begin_and_end_decodes_without_a_note() -> None:
    assert decode_uu_lenient(b"begin 644 a.bin\n" + UU + b"`\nend\n") == (DATA, [])


def test_uuencode_without_begin_decodes_and_says_so() -> None:
    assert decode_uu_lenient(UU + b"end\n") == (DATA, ["uuencoded data without a begin line"])


def test_an_empty_uuencoded_part_is_empty_without_a_note() -> None:
    assert decode_uu_lenient(b"\n\n") == (b"", [])


def test_uuencode_lines_that_are_not_uuencoded_are_counted_not_decoded() -> None:
    data, notes = decode_uu_lenient(b"begin 644 a\n" + UU + b"\xff\xff\xff\nend\n")
    assert data == DATA
    assert notes == ["1 line(s) of uuencoded data could not be decoded"]


def test_well_formed_base64_decodes_without_a_note() -> None:
    assert decode_base64_lenient(base64.encodebytes(DATA)) == (DATA, [])


def test_base64_without_padding_decodes_all_of_it() -> None:
    encoded = base64.b64encode(DATA[:199]).rstrip(b"=")
    assert decode_base64_lenient(encoded) == (DATA[:199], ["base64 without its padding"])


def test_a_lone_trailing_base64_character_is_dropped_and_said() -> None:
    data, notes = decode_base64_lenient(base64.b64encode(DATA[:198]) + b"Q")
    assert data == DATA[:198]
    assert notes == ["base64 of invalid length: its last character holds no whole byte"]


def test_a_uuencoded_file_in_a_text_body_is_taken_out_of_the_text() -> None:
    text = "See the file.\n\nbegin 644 log.gz\n" + UU.decode() + "`\nend\n\nBye\n"
    rest, files = split_uuencoded(text)
    assert files == [("log.gz", DATA)]
    assert rest == "See the file.\n\n\n\nBye\n"


def test_text_that_only_mentions_begin_is_left_alone() -> None:
    text = "begin 644 is how uuencode starts\nend of story\n"
    assert split_uuencoded(text) == (text, [])
