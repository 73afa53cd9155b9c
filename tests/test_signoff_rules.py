from postdesk.workflow.pipeline.client import DEFAULT_APPROVALS, is_approval


def test_approvals_are_recognised() -> None:
    assert is_approval("Approved, thanks!")
    assert is_approval("Looks good.\nOK to deploy")
    assert is_approval("We have SIGNED OFF the change")


def test_negated_or_unrelated_text_is_not_an_approval() -> None:
    assert not is_approval("This is not approved yet")
    assert not is_approval("Who approves this? The unapproved build is broken")
    assert not is_approval("")


def test_configured_phrases_replace_the_defaults() -> None:
    assert is_approval("go live!", ("go live",))
    assert not is_approval("approved", ("go live",))
    assert "approved" in DEFAULT_APPROVALS
