"""mail.header_repair alone: what it changes, what it leaves alone."""

from __future__ import annotations

from postdesk.mail.header_repair import repair_header_block

GOOD = b"From: a@client.example\nSubject: Hi\nMessage-ID: <1@client.example>\n\nbody\n"


def test_a_sound_message_is_returned_as_the_same_object() -> None:
    raw, defects = repair_header_block(GOOD)
    assert raw is GOOD and defects == []


def test_an_mbox_envelope_line_alone_is_left_to_the_stdlib() -> None:
    raw = b"From a@client.example Mon Nov 23 10:00:00 2026\n" + GOOD
    assert repair_header_block(raw) == (raw, [])


def test_blank_and_junk_lines_before_real_headers_are_dropped() -> None:
    raw = b"   \n\nexported by tool 1.0\n" + GOOD
    assert repair_header_block(raw) == (
        GOOD, ["3 line(s) before the header fields were skipped"])


def test_prose_above_a_quoted_header_block_is_not_dropped() -> None:
    raw = b"Thanks!\nSee below.\nFrom: a@client.example\nSent: Monday\nSubject: x\n\nold\n"
    assert repair_header_block(raw) == (raw, [])


def test_one_line_above_quoted_headers_without_transport_fields_stays() -> None:
    raw = b"-- Forwarded --\nFrom: a@client.example\nDate: Mon\nSubject: x\n\nold\n"
    assert repair_header_block(raw) == (raw, [])


def test_an_unindented_continuation_is_indented_only_when_fields_follow() -> None:
    raw = b"Subject: one\ntwo\nFrom: a@client.example\n\nbody\nline\n"
    assert repair_header_block(raw) == (
        b"Subject: one\n two\nFrom: a@client.example\n\nbody\nline\n",
        ["1 unindented continuation line(s) were joined to their header"])
    no_field_after = b"Subject: one\ntwo\nthree\n"
    assert repair_header_block(no_field_after) == (no_field_after, [])


def test_obsolete_white_space_before_a_colon_is_removed_for_known_fields_only() -> None:
    raw = b"Subject  : hi\nFrom : a@client.example\n\nNote : body\n"
    assert repair_header_block(raw) == (
        b"Subject: hi\nFrom: a@client.example\n\nNote : body\n",
        ["2 header field name(s) with white space before the colon"])
    assert repair_header_block(b"Note : text\nmore\n") == (b"Note : text\nmore\n", [])


def test_crlf_line_ends_are_kept() -> None:
    raw = b"junk\r\nReturn-Path: <a@client.example>\r\nFrom: a@client.example\r\n\r\nbody\r\n"
    repaired, _ = repair_header_block(raw)
    assert repaired == b"Return-Path: <a@client.example>\r\nFrom: a@client.example\r\n\r\nbody\r\n"
