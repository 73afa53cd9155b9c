"""Is the From domain of an email authenticated? DKIM with alignment (dkimpy verifies the
message itself), or an ``Authentication-Results`` header added by a mail server we trust
(parsed with authres). Alignment is relaxed, as in DMARC: the signing domain must be the
From domain or a parent of it (``d=client.example`` covers ``mail.client.example``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import authres

log = logging.getLogger("postdesk.auth")

DnsFunc = Callable[..., bytes | None]
_SIGNATURE = re.compile(rb"^dkim-signature:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class AuthVerdict:
    passed: bool
    how: str   # e.g. "dkim d=client.example", "authres mx.desk.example dmarc=pass", or why not


def aligned(signing_domain: str, from_domain: str) -> bool:
    signing, sender = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return sender == signing or sender.endswith("." + signing)


def verify_dkim(raw: bytes, from_domain: str, dnsfunc: DnsFunc | None = None) -> AuthVerdict:
    """Verify every DKIM signature on the message; pass if one verifies and aligns."""
    count = len(_SIGNATURE.findall(raw))
    if not count:
        return AuthVerdict(False, "no DKIM signature")
    # Imported on first use: most mail carries no signature, and dkimpy with dnspython
    # costs ~0.05 s CPU at every start otherwise.
    import dkim

    reasons = []
    for idx in range(count):
        checker = dkim.DKIM(raw, logger=log)
        try:
            ok = checker.verify(idx=idx, dnsfunc=dnsfunc) if dnsfunc else checker.verify(idx=idx)
        except Exception as exc:  # dkimpy raises on malformed signatures and DNS trouble
            reasons.append(f"signature {idx}: {exc}")
            continue
        domain = (checker.domain or b"").decode("ascii", "replace")
        if ok and aligned(domain, from_domain):
            return AuthVerdict(True, f"dkim d={domain}")
        reasons.append(f"signature {idx}: d={domain} " + ("not aligned" if ok else "invalid"))
    return AuthVerdict(False, "; ".join(reasons))


def trusted_results(headers: Iterable[str], from_domain: str,
                    trusted_ids: Iterable[str]) -> AuthVerdict:
    """``Authentication-Results`` from a trusted server saying DMARC passed for the From
    domain, or DKIM passed with an aligned ``header.d``. Headers from other servers are
    ignored: anyone can write such a header into their own email."""
    trusted = {t.lower() for t in trusted_ids}
    for value in headers:
        try:
            parsed = authres.AuthenticationResultsHeader.parse(
                f"Authentication-Results: {value}")
        except Exception:  # a malformed header proves nothing
            continue
        if (parsed.authserv_id or "").lower() not in trusted:
            continue
        for result in parsed.results:
            props = {f"{p.type}.{p.name}": (p.value or "") for p in result.properties}
            if result.method == "dmarc" and result.result == "pass" and aligned(
                    props.get("header.from", ""), from_domain):
                return AuthVerdict(True, f"authres {parsed.authserv_id} dmarc=pass")
            if result.method == "dkim" and result.result == "pass" and aligned(
                    props.get("header.d", ""), from_domain):
                return AuthVerdict(True, f"authres {parsed.authserv_id} dkim=pass")
    return AuthVerdict(False, "no passing Authentication-Results from a trusted server")


def authenticate(raw: bytes, from_addr: str | None, auth_results: Iterable[str],
                 trusted_ids: Iterable[str], dnsfunc: DnsFunc | None = None) -> AuthVerdict:
    if not from_addr or "@" not in from_addr:
        return AuthVerdict(False, "no From address")
    domain = from_addr.rsplit("@", 1)[1]
    verdict = trusted_results(auth_results, domain, trusted_ids)
    if verdict.passed:
        return verdict
    dkim_verdict = verify_dkim(raw, domain, dnsfunc)
    if dkim_verdict.passed:
        return dkim_verdict
    return AuthVerdict(False, f"{dkim_verdict.how}; {verdict.how}")
