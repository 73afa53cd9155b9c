"""Rendering of every email postdesk writes, from jinja2 templates.

Templates come in pairs, ``NAME.txt`` and ``NAME.html``. HTML templates are autoescaped,
so text from a client can never inject markup into mail we send. An operator can
override any template for all clients in ``data_dir/templates/NAME.*`` or for one org in
``data_dir/templates/orgs/SLUG/NAME.*``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

from postdesk import templates as builtin_templates

BUILTIN_DIR = Path(builtin_templates.__file__).parent


@dataclass(frozen=True)
class RenderedEmail:
    text: str
    html: str | None


class Renderer:
    """``template_globals``: helpers every template may call, e.g. ``hours`` (how a
    duration is shown). They are handed in by the shell rather than imported here: this
    module knows email formats, not the desk's rules (``workflow.rules``), and template
    data must stay plain values (drafts store it as JSON), so helpers cannot travel in it."""

    def __init__(self, override_dir: Path | None = None, *,
                 template_globals: Mapping[str, Callable[..., Any]] | None = None):
        loaders = []
        if override_dir is not None:
            loaders.append(FileSystemLoader(str(override_dir)))
        loaders.append(FileSystemLoader(str(BUILTIN_DIR)))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=lambda name: bool(name and name.endswith(".html")),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.globals.update(template_globals or {})

    def render(self, name: str, context: dict[str, Any], org_slug: str | None = None
               ) -> RenderedEmail:
        text = self._render_one(name, "txt", context, org_slug)
        if text is None:
            raise TemplateNotFound(f"{name}.txt")
        html = self._render_one(name, "html", context, org_slug)
        return RenderedEmail(text=text, html=html)

    def _render_one(self, name: str, ext: str, context: dict[str, Any],
                    org_slug: str | None) -> str | None:
        candidates = [f"{name}.{ext}"]
        if org_slug:
            candidates.insert(0, f"orgs/{org_slug}/{name}.{ext}")
        try:
            template = self.env.select_template(candidates)
        except TemplateNotFound:
            return None
        return template.render(**context)
