"""Rendering of every email postdesk writes, from jinja2 templates.

Templates come in pairs, ``NAME.txt`` and ``NAME.html``. HTML templates are autoescaped,
so text from a client can never inject markup into mail we send. An operator can
override any template for all clients in ``data_dir/templates/NAME.*`` or for one org in
``data_dir/templates/orgs/SLUG/NAME.*``.

Canned replies (``#reply NAME``) are text templates ``replies/NAME.txt`` found the same
way: the org's override, then the desk's, then the built-in one. Every template an
operator writes renders in jinja2's sandbox; the built-in ones, part of the package, do
not need it (``_environment``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

from postdesk import templates as builtin_templates

BUILTIN_DIR = Path(builtin_templates.__file__).parent
log = logging.getLogger("postdesk.render")
# What every template is given besides its own data (desk.outbox adds desk and ticket).
COMMON_NAMES = frozenset({"desk", "ticket", "hours"})
# What a canned reply is given (``Renderer.canned_reply``), besides COMMON_NAMES.
REPLY_NAMES = frozenset({"ref", "requester", "staff_name"})
REPLIES_DIR = "replies"


@dataclass(frozen=True)
class RenderedEmail:
    text: str
    html: str | None


def _environment(loader: BaseLoader, *, auto_reload: bool = True, sandboxed: bool = True
                 ) -> Environment:
    # An operator's template (an override, a canned reply in data_dir) renders in
    # jinja2's immutable sandbox: no access to Python internals (``__class__``,
    # ``__globals__``), no mutation of what it is given. The sandbox guards against what a
    # template's *source* may do; the built-in templates ship inside the package, as
    # trusted as its Python code, and render without it (its checks on every attribute
    # and call were 40 % of the Python calls of rendering a ticket's two emails). The
    # data is the same either way, and never rendered as a template.
    environment = ImmutableSandboxedEnvironment if sandboxed else Environment
    return environment(
        loader=loader,
        auto_reload=auto_reload,
        autoescape=lambda name: bool(name and name.endswith(".html")),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


class Renderer:
    """``template_globals``: helpers every template may call, e.g. ``hours`` (how a
    duration is shown). They are handed in by the shell rather than imported here: this
    module knows email formats, not the desk's rules (``workflow.rules``), and template
    data must stay plain values (drafts store it as JSON), so helpers cannot travel in it.

    An override that fails to render (a syntax error, an unknown variable, a sandbox
    violation) is logged and the built-in template is used instead: an operator's
    mistake never stops mail. ``check_overrides`` finds such mistakes ahead of time."""

    def __init__(self, override_dir: Path | None = None, *,
                 template_globals: Mapping[str, Callable[..., Any]] | None = None):
        builtin = FileSystemLoader(str(BUILTIN_DIR))
        # The built-in templates ship with the code and change only with it: compiled once,
        # not checked on disk at every render. Overrides are an operator's files, edited
        # while the desk runs: their environment looks for changes.
        self.builtin_env = _environment(builtin, auto_reload=False, sandboxed=False)
        self.override_env = (_environment(ChoiceLoader([FileSystemLoader(str(override_dir)),
                                                        builtin]))
                             if override_dir is not None else None)
        self.override_dir = override_dir
        for env in (self.builtin_env, self.override_env):
            if env is not None:
                env.globals.update(template_globals or {})

    def render(self, name: str, context: dict[str, Any], org_slug: str | None = None
               ) -> RenderedEmail:
        text = self._render_one(name, "txt", context, org_slug)
        if text is None:
            raise TemplateNotFound(f"{name}.txt")
        html = self._render_one(name, "html", context, org_slug)
        return RenderedEmail(text=text, html=html)

    def canned_reply(self, name: str, context: dict[str, Any], org_slug: str | None = None
                     ) -> str | None:
        """The text of canned reply ``name`` (org override, desk override, built-in), or
        None when there is no such reply. ``name`` is a slug (the command parser's)."""
        if "/" in name or name.startswith("."):
            return None
        return self._render_one(f"{REPLIES_DIR}/{name}", "txt", context, org_slug)

    def _render_one(self, name: str, ext: str, context: dict[str, Any],
                    org_slug: str | None) -> str | None:
        if self.override_env is not None and self.override_dir is not None:
            candidates = [f"{name}.{ext}"]
            if org_slug:
                candidates.insert(0, f"orgs/{org_slug}/{name}.{ext}")
            for candidate in candidates:
                if not (self.override_dir / candidate).is_file():
                    continue
                try:
                    return self.override_env.get_template(candidate).render(**context)
                except Exception as exc:
                    log.error("template override %s failed (%s: %s); using the built-in "
                              "%s.%s", self.override_dir / candidate, type(exc).__name__,
                              exc, name, ext)
                    break
        try:
            template = self.builtin_env.get_template(f"{name}.{ext}")
        except TemplateNotFound:
            return None
        return template.render(**context)


def check_overrides(override_dir: Path) -> list[str]:
    """Problems of an operator's template overrides, each with its file: syntax errors,
    variables the built-in template of the same name is not given, and access to private
    attributes (``__class__``, ``_x``), which the sandbox refuses at render time."""
    if not override_dir.is_dir():
        return []
    builtin_env = _environment(FileSystemLoader(str(BUILTIN_DIR)))
    problems: list[str] = []
    for path in sorted(_template_files(override_dir)):
        try:
            source = path.read_text(encoding="utf-8")
            tree = builtin_env.parse(source)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot be read ({exc})")
            continue
        except TemplateSyntaxError as exc:
            problems.append(f"{path}:{exc.lineno}: syntax error: {exc.message}")
            continue
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            attr = getattr(node, "attr", None)
            if attr is None and isinstance(node, nodes.Getitem) and isinstance(
                    node.arg, nodes.Const):
                attr = node.arg.value
            if isinstance(attr, str) and attr.startswith("_"):
                problems.append(f"{path}:{node.lineno}: sandbox violation: access to "
                                f"{attr!r} is not allowed")
        known = (REPLY_NAMES | COMMON_NAMES if path.parent.name == REPLIES_DIR
                 else _known_names(builtin_env, path.name))
        if known is None:
            problems.append(f"{path}: no built-in template {path.name} to override")
            continue
        for name in sorted(meta.find_undeclared_variables(tree) - known):
            problems.append(f"{path}: unknown variable {name!r} (this template is given: "
                            f"{', '.join(sorted(known))})")
    return problems


def _template_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".txt", ".html"):
            yield path


def _known_names(env: Environment, filename: str) -> frozenset[str] | None:
    path = BUILTIN_DIR / filename
    if not path.is_file():
        return None
    tree = env.parse(path.read_text(encoding="utf-8"))
    names = set(meta.find_undeclared_variables(tree))
    # Partials a built-in includes are given the same data.
    for ref in meta.find_referenced_templates(tree):
        if ref and (BUILTIN_DIR / ref).is_file():
            names |= meta.find_undeclared_variables(
                env.parse((BUILTIN_DIR / ref).read_text(encoding="utf-8")))
    return frozenset(names | COMMON_NAMES)
