"""docs/configuration.md is the reference of every config key: generated from the config
models by `python -m postdesk.configdoc`, with a meaning written for each key."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from postdesk import configdoc
from postdesk.workflow.rules import config as config_module
from postdesk.workflow.rules.config import Config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_config_key_is_documented_with_type_default_and_meaning() -> None:
    assert configdoc.problems(DOC.read_text(encoding="utf-8")) == []


def test_the_walk_reaches_every_field_of_every_config_model() -> None:
    """Independently of the walk: every field of every model class in the config module
    appears as the last part of some documented key."""
    segments = {part.removesuffix("[]") for key in configdoc.walk()
                for part in key.path.split(".")}
    models = [obj for obj in vars(config_module).values()
              if isinstance(obj, type) and issubclass(obj, BaseModel)
              and obj.__module__ == config_module.__name__ and obj.model_fields]
    assert Config in models and len(models) > 10
    for model in models:
        for name in model.model_fields:
            assert name in segments, f"{model.__name__}.{name} is not in the reference"


def test_a_new_field_without_a_meaning_fails_the_check(monkeypatch) -> None:
    class WithNewKey(config_module.SchedulerConfig):
        new_knob: int = 3

    class WithDescribedKey(config_module.SchedulerConfig):
        new_knob: int = Field(default=3, description="turns the new knob")

    text = DOC.read_text(encoding="utf-8")
    for model, expected in ((WithNewKey, ["scheduler.new_knob: missing from "
                                          "docs/configuration.md"]), (WithDescribedKey, None)):
        fields = dict(Config.model_fields)
        fields["scheduler"] = fields["scheduler"].__class__.from_annotated_attribute(
            model, fields["scheduler"].default_factory)   # type: ignore[arg-type]
        monkeypatch.setattr(Config, "model_fields", fields)
        problems = configdoc.problems(text)
        if expected is not None:
            assert problems == expected
        else:
            # A key with a description is documented by regenerating: no hand edit needed.
            regenerated = configdoc.render(configdoc.written_meanings(text))
            assert "| `scheduler.new_knob` | integer | `3` | turns the new knob |" in regenerated
            assert configdoc.problems(regenerated) == []


def test_the_generator_keeps_written_meanings_and_rewrites_the_file(tmp_path) -> None:
    copy = tmp_path / "configuration.md"
    copy.write_text(DOC.read_text(encoding="utf-8").replace(
        "| `metrics.port` | integer (optional) | unset |", "| `metrics.port` | wrong | wrong |"))
    assert configdoc.main(["--check", "--path", str(copy)]) == 1
    assert configdoc.main(["--path", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
