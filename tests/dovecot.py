"""A real Dovecot IMAP server for tests.

``DovecotServer`` writes a standalone configuration (nothing is included from
/etc/dovecot), runs ``dovecot -F -c FILE`` as a child of the test process on a free
loopback port, and stops it with ``doveadm -c FILE stop``. Mail is stored as
maildir under ``root/mail/<user>/Maildir`` owned by nobody:nogroup.

Needs root (Dovecot switches to the mail user ``nobody``) and the Debian package
``dovecot-imapd``. Several servers can run at once: each has its own port,
``base_dir``, ``state_dir``, log and ``instance_name``.

Why ``-F`` (foreground) rather than letting Dovecot daemonize: a daemonized master is
re-parented to PID 1, which on these machines reaps exited children only every
second or two. Until it does, the dead master is a zombie, ``kill(pid, 0)`` still
succeeds, and ``doveadm stop`` waits its full 3 s. As our child, the master is reaped
at once by a reaper thread, so a stop takes ~1 s (Dovecot's own shutdown pause).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import imapclient
from imapclient import imap_utf7

from tests.ports import free_port

DEFAULT_USER = "support@desk.example"
DEFAULT_USERS: Mapping[str, str] = {DEFAULT_USER: "secret"}
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"
AUTO_CREATE_FOLDERS: tuple[str, ...] = ("Processed",)

AppendMethod = Literal["multiappend", "append", "maildir"]


class DovecotError(RuntimeError):
    """The test Dovecot server could not be started, stopped or used."""


def dovecot_binaries() -> tuple[str, str] | None:
    """Paths of ``dovecot`` and ``doveadm``, or None when Dovecot is not installed.

    /usr/sbin is searched too: it is often missing from a non-login PATH.
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    dovecot = shutil.which("dovecot", path=path)
    doveadm = shutil.which("doveadm", path=path)
    if dovecot is None or doveadm is None:
        return None
    return dovecot, doveadm


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class DovecotServer:
    """One Dovecot instance serving IMAP (plaintext) on ``host``:``port``.

    ``root`` and all its parents must be world-traversable: Dovecot's auth process runs
    as the user ``dovecot`` and must reach the passwd-file and the sockets under it
    (pytest's ``tmp_path`` is under a 0700 directory, so it does not work; use
    ``tempfile.mkdtemp()`` under /tmp). ``root`` itself is created and chmod 0755.
    """

    host: str
    port: int

    def __init__(
        self,
        root: Path,
        users: Mapping[str, str] = DEFAULT_USERS,
        *,
        host: str = "127.0.0.1",
        auto_create: Iterable[str] = AUTO_CREATE_FOLDERS,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        kill_on_parent_exit: bool = True,
    ) -> None:
        binaries = dovecot_binaries()
        if binaries is None:
            raise DovecotError("dovecot-imapd is not installed (no dovecot/doveadm binary)")
        if os.geteuid() != 0:
            raise DovecotError("DovecotServer must run as root (Dovecot switches to 'nobody')")
        if not users:
            raise DovecotError("at least one user is needed")
        for name, password in users.items():
            for value in (name, password):
                if not value or any(c in value for c in ":\r\n\0"):
                    raise DovecotError(f"user names/passwords must be non-empty, no ':': {name!r}")
        self._dovecot, self._doveadm = binaries
        self.root = Path(root).absolute()
        self.users: dict[str, str] = dict(users)
        self.default_user = next(iter(self.users))
        self.host = host
        self.port = 0
        self.auto_create = tuple(auto_create)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.kill_on_parent_exit = kill_on_parent_exit
        self.instance_name = f"pdtest-{uuid.uuid4().hex[:10]}"
        self.config_path = self.root / "dovecot.conf"
        self.passwd_path = self.root / "passwd"
        self.log_path = self.root / "dovecot.log"
        self.stderr_path = self.root / "dovecot.stderr"
        self.base_dir = self.root / "run"
        self.state_dir = self.root / "state"
        self.mail_dir = self.root / "mail"
        self._mail_uid = pwd.getpwnam(MAIL_USER).pw_uid
        self._mail_gid = grp.getgrnam(MAIL_GROUP).gr_gid
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: threading.Thread | None = None
        self._seq = 0
        self._prepare_root()

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start Dovecot and wait until a LOGIN succeeds.

        The first start picks a free port (retrying with a new one if another process
        wins the race for it); later starts reuse ``self.port``.
        """
        if self.running:
            raise DovecotError(f"{self.instance_name} is already running on port {self.port}")
        keep_port = self.port != 0
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port(self.host)
            try:
                self._start_once()
                return
            except _PortTaken:
                if keep_port:
                    raise DovecotError(
                        f"port {self.port} is taken by another process; cannot restart "
                        f"on the same port\n{self._diagnostics()}"
                    ) from None
        raise DovecotError(f"could not find a free port after 5 tries\n{self._diagnostics()}")

    def stop(self) -> None:
        """``doveadm -c FILE stop``, then wait until the master is gone and the port is
        closed. Kills the master and this instance's processes by pid if they linger."""
        proc = self._proc
        if proc is None:
            return
        deadline = time.monotonic() + self.stop_timeout
        if proc.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [self._doveadm, "-c", str(self.config_path), "stop"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=self.stop_timeout,
                    check=False,
                )
        if not self._wait_exit(deadline):
            self._kill(proc.pid)
            self._wait_exit(time.monotonic() + 5)
        self._kill_leftovers()
        while port_accepts(self.host, self.port, timeout=0.2):
            if time.monotonic() > deadline:
                raise DovecotError(
                    f"port {self.port} still accepts after stopping {self.instance_name}\n"
                    f"{self._diagnostics()}"
                )
            time.sleep(0.02)
        self._proc = None
        self._reaper = None

    def kill(self) -> None:
        """Stop at once: SIGKILL the master and this instance's processes (no clean
        shutdown, so ~10 ms instead of ~1 s). For teardown of a server being thrown away."""
        proc = self._proc
        if proc is None:
            return
        self._kill(proc.pid)
        self._wait_exit(time.monotonic() + 5)
        self._kill_leftovers()
        deadline = time.monotonic() + self.stop_timeout
        while port_accepts(self.host, self.port, timeout=0.2) or self._instance_pids():
            if time.monotonic() > deadline:
                raise DovecotError(f"{self.instance_name} survived SIGKILL\n{self._diagnostics()}")
            self._kill_leftovers()
            time.sleep(0.01)
        self._proc = None
        self._reaper = None

    def restart(self) -> None:
        """Stop, then start again on the same port (mail and indexes are kept)."""
        self.stop()
        self.start()

    # ------------------------------------------------------------------ IMAP helpers

    def client(self, user: str | None = None, timeout: float = 10.0) -> imapclient.IMAPClient:
        """A new IMAPClient connection, logged in as ``user`` (plaintext, loopback)."""
        user = user or self.default_user
        conn = imapclient.IMAPClient(self.host, port=self.port, ssl=False, timeout=timeout)
        try:
            conn.login(user, self.users[user])
        except BaseException:
            conn.shutdown()
            raise
        return conn

    def append(self, raw: bytes, folder: str = "INBOX", user: str | None = None) -> None:
        with self.client(user) as conn:
            conn.append(folder, raw)

    def append_many(
        self,
        raws: Iterable[bytes],
        folder: str = "INBOX",
        user: str | None = None,
        *,
        method: AppendMethod = "multiappend",
    ) -> None:
        """Deliver many messages over one connection, in order (UIDs follow ``raws``).

        ``"multiappend"`` (default): MULTIAPPEND in batches of up to 500 messages / 8 MB.
        ``"append"``: one APPEND per message (latency-bound, ~8x slower).
        ``"maildir"``: write files straight into the folder's maildir ``new/`` (owned by
        nobody:nogroup), then re-SELECT so Dovecot assigns the UIDs before returning;
        ~1.6-2x faster than MULTIAPPEND on tmpfs, not faster on the ext4 disk.
        """
        if method not in ("multiappend", "append", "maildir"):
            raise ValueError(f"unknown append method {method!r}")
        with self.client(user) as conn:
            if method == "append":
                for raw in raws:
                    conn.append(folder, raw)
            elif method == "multiappend":
                for batch in _batches(raws, max_count=500, max_bytes=8 << 20):
                    conn.multiappend(folder, batch)
            else:
                if not conn.folder_exists(folder):
                    conn.create_folder(folder)
                conn.select_folder(folder, readonly=True)  # Dovecot creates maildirs lazily
                self._write_maildir(self.folder_path(folder, user), raws)
                conn.unselect_folder()
                conn.select_folder(folder, readonly=True)  # this sync assigns the UIDs

    def uids(self, folder: str = "INBOX", user: str | None = None) -> list[int]:
        with self.client(user) as conn:
            conn.select_folder(folder, readonly=True)
            return sorted(int(uid) for uid in conn.search("ALL"))

    def uidvalidity(self, folder: str = "INBOX", user: str | None = None) -> int:
        # EXAMINE rather than STATUS: STATUS may be answered from the list index cache.
        with self.client(user) as conn:
            return int(conn.select_folder(folder, readonly=True)[b"UIDVALIDITY"])

    def reset_uidvalidity(self, folder: str = "INBOX", user: str | None = None) -> None:
        """Make Dovecot report a new UIDVALIDITY for ``folder``, keeping its messages.

        Stops the server, deletes the folder's ``dovecot-uidlist`` and ``dovecot.index*``
        (and the mailbox list index, which caches UIDVALIDITY for STATUS), starts it
        again and checks that the value changed and the message count did not. UIDs
        are assigned afresh from 1.
        """
        before = self.uidvalidity(folder, user)
        count = len(self.uids(folder, user))
        folder_dir = self.folder_path(folder, user)
        maildir_root = self.maildir_root(user)
        self.stop()
        doomed = [folder_dir / "dovecot-uidlist", *folder_dir.glob("dovecot.index*")]
        doomed += maildir_root.glob("dovecot.list.index*")
        for path in doomed:
            path.unlink(missing_ok=True)
        self.start()
        after = self.uidvalidity(folder, user)
        after_count = len(self.uids(folder, user))
        if after == before:
            raise DovecotError(f"UIDVALIDITY of {folder!r} did not change ({after})")
        if after_count != count:
            raise DovecotError(f"{folder!r} had {count} messages, now {after_count}")

    # ------------------------------------------------------------------ files

    def maildir_root(self, user: str | None = None) -> Path:
        return self.mail_dir / (user or self.default_user) / "Maildir"

    def folder_path(self, folder: str = "INBOX", user: str | None = None) -> Path:
        """The maildir directory of ``folder`` (Maildir++ layout, separator '.')."""
        root = self.maildir_root(user)
        if folder.upper() == "INBOX":
            return root
        return root / ("." + imap_utf7.encode(folder).decode("ascii"))

    def log_tail(self, n: int = 50) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    # ------------------------------------------------------------------ internals

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise DovecotError(
                    f"{parent} is not world-traversable (mode "
                    f"{oct(parent.stat().st_mode & 0o777)}); Dovecot's auth process (user "
                    f"'dovecot') could not reach {self.root}. Use a directory under /tmp."
                )
        # Unix sockets live under base_dir; sun_path is limited to 108 bytes.
        longest = self.base_dir / "login" / "imap-urlauth"
        if len(os.fsencode(longest)) > 100:
            raise DovecotError(f"root path too long for Dovecot's unix sockets: {self.root}")
        self.state_dir.mkdir(exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, self._mail_uid, self._mail_gid)
        self.mail_dir.chmod(0o755)
        self.passwd_path.write_text(
            "".join(f"{name}:{{PLAIN}}{pw}::::::\n" for name, pw in self.users.items())
        )
        self.passwd_path.chmod(0o644)

    def _config(self) -> str:
        mailboxes = "".join(
            f'  mailbox "{name}" {{\n    auto = create\n  }}\n' for name in self.auto_create
        )
        return f"""\
# Generated by tests/dovecot.py. Standalone: includes nothing from /etc/dovecot.
protocols = imap
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
instance_name = {self.instance_name}
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 1000
mailbox_idle_check_interval = 1 secs
default_process_limit = 1000
default_client_limit = 4000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_GROUP} home={self.mail_dir}/%u
}}
namespace inbox {{
  inbox = yes
  separator = .
{mailboxes}}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

    def _start_once(self) -> None:
        self.config_path.write_text(self._config())
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [self._dovecot, "-F", "-c", str(self.config_path)]
        setpriv = shutil.which("setpriv")
        if self.kill_on_parent_exit and setpriv:
            # If the test process dies without stopping us, Dovecot gets SIGTERM.
            # (The "parent" is the thread that called start().)
            cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
        with open(self.stderr_path, "ab") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT
            )
        self._proc = proc
        self._reaper = threading.Thread(
            target=proc.wait, name=f"reap-{self.instance_name}", daemon=True
        )
        self._reaper.start()
        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                self._proc = None
                if "Address already in use" in self._log_since(log_offset):
                    raise _PortTaken
                raise DovecotError(
                    f"dovecot exited with status {proc.returncode} during start\n"
                    f"{self._diagnostics()}"
                )
            try:
                conn = self.client(timeout=2.0)
            except (OSError, imapclient.exceptions.IMAPClientError) as exc:
                last_error = exc
                time.sleep(0.02)
                continue
            conn.logout()
            return
        self.stop()
        raise DovecotError(
            f"dovecot did not accept a LOGIN on {self.host}:{self.port} within "
            f"{self.start_timeout:.0f} s (last error: {last_error!r})\n{self._diagnostics()}"
        )

    def _wait_exit(self, deadline: float) -> bool:
        reaper = self._reaper
        if reaper is None:
            return True
        reaper.join(max(0.0, deadline - time.monotonic()))
        return not reaper.is_alive()

    def _instance_pids(self) -> list[int]:
        prefix = f"dovecot-{self.instance_name}/".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(prefix):
                pids.append(int(entry.name))
        return pids

    def _kill_leftovers(self) -> None:
        for pid in self._instance_pids():
            self._kill(pid)

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _write_maildir(self, folder_dir: Path, raws: Iterable[bytes]) -> None:
        tmp_dir, new_dir = folder_dir / "tmp", folder_dir / "new"
        if not new_dir.is_dir():
            raise DovecotError(f"no maildir at {folder_dir}")
        uid, gid = self._mail_uid, self._mail_gid
        # Dovecot assigns UIDs to new files sorted by the time in their names, then by
        # name: same second, zero-padded sequence keeps the order of ``raws``.
        stamp = int(time.time())
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        for raw in raws:
            self._seq += 1
            name = f"{stamp}.M{self._seq:06d}P{os.getpid()}Q{self._seq}.{host}"
            tmp_path = tmp_dir / name
            with open(tmp_path, "xb") as fh:
                fh.write(raw)
                os.fchmod(fh.fileno(), 0o600)
                os.fchown(fh.fileno(), uid, gid)
            os.rename(tmp_path, new_dir / name)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self) -> str:
        parts = [f"--- {self.log_path} (tail) ---", self.log_tail(30)]
        try:
            stderr = self.stderr_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            stderr = ""
        if stderr:
            parts += [f"--- {self.stderr_path} (tail) ---", "\n".join(stderr.splitlines()[-20:])]
        return "\n".join(parts)


class _PortTaken(Exception):
    pass


def _batches(raws: Iterable[bytes], max_count: int, max_bytes: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for raw in raws:
        if batch and (len(batch) >= max_count or size + len(raw) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(raw)
        size += len(raw)
    if batch:
        yield batch
