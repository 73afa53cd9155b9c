from __future__ import annotations

from postdesk.workflow.rules.attachments import (
    FileFacts,
    files_for_notification,
    human_size,
    relay_refusals,
)

MB = 1024 * 1024


def f(key: int, size: int, kept: bool = True) -> FileFacts:
    return FileFacts(key=key, filename=f"file{key}.bin", size=size, kept=kept)


def test_a_notification_attaches_files_in_order_while_they_fit_and_lists_the_rest() -> None:
    chosen = files_for_notification([f(1, 6 * MB), f(2, 5 * MB), f(3, 3 * MB)], 10 * MB)
    assert [x.key for x in chosen.attach] == [1, 3]
    assert [x.key for x in chosen.listed] == [2]


def test_a_file_that_was_not_kept_is_listed_never_attached() -> None:
    chosen = files_for_notification([f(1, 10, kept=False)], 10 * MB)
    assert chosen.attach == () and [x.key for x in chosen.listed] == [1]


def test_a_limit_of_zero_lists_every_file() -> None:
    assert files_for_notification([f(1, 1)], 0).attach == ()


def test_a_relay_within_the_limit_has_no_refusals() -> None:
    assert relay_refusals([f(1, 4 * MB), f(2, 6 * MB)], 10 * MB) == []


def test_a_relay_over_the_total_is_refused_with_the_total_and_the_limit() -> None:
    [problem] = relay_refusals([f(1, 6 * MB), f(2, 6 * MB)], 10 * MB)
    assert "12.0 MB" in problem and "10.0 MB" in problem


def test_a_relay_with_a_file_not_kept_names_that_file() -> None:
    [problem] = relay_refusals([f(1, 30 * MB, kept=False)], 10 * MB)
    assert problem.startswith("file1.bin (30.0 MB)")


def test_sizes_read_as_people_write_them() -> None:
    assert [human_size(n) for n in (900, 200 * 1024, 1024 * 1024)] == ["900 B", "200 KB",
                                                                       "1.0 MB"]
