"""One error tree: each error postdesk raises on purpose is a user error, a transient
one or a permanent one, and the CLI turns every user error into exit 2 and one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from postdesk.outbound.transport import PermanentFailure, TemporaryFailure
from postdesk.storage.db import DatabaseUrlError
from postdesk.workflow.pipeline.quarantine import QuarantineActionError
from postdesk.workflow.rules.calendar import CalendarError
from postdesk.workflow.rules.config import ConfigError
from postdesk.workflow.rules.errors import PermanentError, TransientError, UserError
from postdesk.workflow.tasks.broker import BrokerUrlError


@pytest.mark.parametrize("error", [ConfigError, CalendarError, DatabaseUrlError,
                                   BrokerUrlError, QuarantineActionError])
def test_mistakes_a_person_can_fix_are_user_errors(error: type[Exception]) -> None:
    assert issubclass(error, UserError)


def test_a_smarthost_4xx_is_transient_and_a_5xx_permanent() -> None:
    assert issubclass(TemporaryFailure, TransientError)
    assert issubclass(PermanentFailure, PermanentError)
    assert not issubclass(TemporaryFailure, PermanentError)


def test_releasing_a_message_that_is_not_quarantined_exits_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from postdesk.cli import main
    from tests.support import Backend, config_text

    config = tmp_path / "postdesk.toml"
    be = Backend("sqlite", f"sqlite:///{tmp_path / 'pd.db'}", "stub://", "errors")
    config.write_text(config_text(be, tmp_path / "data"))
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert main(["quarantine", "release", "999", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["postdesk: message 999 is not in quarantine"]
