"""Logging in to an IMAP mailbox: a password named by an environment variable, or an
OAuth2 access token (XOAUTH2) printed by ``oauth2_token_command``.

The token command is the operator's glue to their identity provider (``oauth2l fetch``,
``gcloud auth print-access-token``, a script around a refresh token...). It prints either
the bare token or JSON ``{"access_token": ..., "expires_in": seconds}``. A token with a
known lifetime is cached and fetched again shortly before it expires; a bare token is
fetched again for every login, since we cannot know when it lapses."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from postdesk.workflow.rules.config import ImapConfig, secret_from_env

# Fetch a new token this long before the old one expires: a login, a sync and the IDLE
# re-issue all fit comfortably inside it.
REFRESH_MARGIN_S = 120.0
TOKEN_COMMAND_TIMEOUT_S = 60.0


class AuthFailed(Exception):
    """The server refused our credentials, or we could not get any: retry slowly, alert."""


class AuthUnavailable(Exception):
    """The server could not check credentials right now ([UNAVAILABLE]): a transient error."""


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float | None   # time.monotonic() seconds; None when the lifetime is unknown


def parse_token_output(output: str, now: float) -> Token:
    """The token command's stdout: a bare token or JSON with access_token/expires_in."""
    text = output.strip()
    if not text:
        raise AuthFailed("oauth2_token_command printed nothing")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AuthFailed(f"oauth2_token_command printed invalid JSON: {exc}") from None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthFailed("oauth2_token_command printed JSON without an access_token")
        expires_in = data.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            return Token(token, now + float(expires_in))
        return Token(token, None)
    if len(text.split()) != 1:
        raise AuthFailed("oauth2_token_command printed more than one word and no JSON")
    return Token(text, None)


class TokenSource:
    """Runs the token command and caches a token whose lifetime is known."""

    def __init__(self, command: str, *, monotonic: Callable[[], float] = time.monotonic,
                 margin_s: float = REFRESH_MARGIN_S):
        self.command = command
        self.monotonic = monotonic
        self.margin_s = margin_s
        self._token: Token | None = None

    def get(self, *, force: bool = False) -> tuple[str, bool]:
        """(token, fresh): ``fresh`` is False when it came from the cache."""
        if not force and self._token is not None and not self.needs_refresh():
            return self._token.value, False
        self._token = self._run()
        return self._token.value, True

    def needs_refresh(self) -> bool:
        token = self._token
        if token is None or token.expires_at is None:
            return True
        return self.monotonic() >= token.expires_at - self.margin_s

    def refresh_due_at(self) -> float | None:
        """When a session logged in with the current token should reconnect with a new one."""
        token = self._token
        if token is None or token.expires_at is None:
            return None
        return token.expires_at - self.margin_s

    def invalidate(self) -> None:
        self._token = None

    def _run(self) -> Token:
        try:
            proc = subprocess.run(self.command, shell=True, capture_output=True, text=True,
                                  timeout=TOKEN_COMMAND_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise AuthFailed(f"oauth2_token_command did not finish within "
                             f"{TOKEN_COMMAND_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise AuthFailed(f"oauth2_token_command could not run: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()[-1:] or ["(no output on stderr)"]
            raise AuthFailed(f"oauth2_token_command exited with status {proc.returncode}: "
                             f"{err[0][:300]}")
        return parse_token_output(proc.stdout, self.monotonic())


class Authenticator:
    """Logs a connected client in with the mailbox's configured credentials."""

    def __init__(self, box: ImapConfig, *, monotonic: Callable[[], float] = time.monotonic):
        self.box = box
        self.tokens = (TokenSource(box.oauth2_token_command, monotonic=monotonic)
                       if box.oauth2_token_command else None)

    @property
    def method(self) -> str:
        return "OAuth2 (XOAUTH2)" if self.tokens else "password"

    def session_deadline(self) -> float | None:
        """Reconnect before this monotonic time so the next login has a fresh token."""
        return self.tokens.refresh_due_at() if self.tokens else None

    def login(self, client: IMAPClient) -> None:
        if self.tokens is None:
            self._password_login(client)
            return
        token, fresh = self.tokens.get()
        try:
            _checked(client.oauth2_login, self.box.username, token)
        except AuthFailed:
            if fresh:
                self.tokens.invalidate()
                raise
            # A cached token can be revoked before it expires: one more try with a new one.
            token, _ = self.tokens.get(force=True)
            try:
                _checked(client.oauth2_login, self.box.username, token)
            except AuthFailed:
                self.tokens.invalidate()
                raise

    def _password_login(self, client: IMAPClient) -> None:
        var = self.box.password_env
        password = secret_from_env(var)
        if not password:
            raise AuthFailed(f"environment variable {var} (password_env) is not set or empty")
        _checked(client.login, self.box.username, password)


def _checked(login: Callable[[str, str], object], user: str, secret: str) -> None:
    try:
        login(user, secret)
    except LoginError as exc:
        text = str(exc)
        if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:
            text = text[2:-1]   # imaplib reprs the server's bytes
        # RFC 5530: the server could not check the credentials, they were not refused.
        if "[UNAVAILABLE]" in text.upper():
            raise AuthUnavailable(text) from None
        raise AuthFailed(f"the server refused the login: {text}") from None
