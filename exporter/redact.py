"""Masks anything shaped like a key or token in text shown on `/` or written to logs, and
cuts it to a short length.

Provider error bodies are the provider's words: they may quote a (masked or not) key, a
bearer token, or a signed URL. The exporter never puts a key in a message itself; this is the
belt to those braces, applied wherever outside text is shown. Every key the settings read is
also remembered here and masked verbatim, whatever its shape.
"""

from __future__ import annotations

import re
import threading

MASK = "[redacted]"
SHORT = 300  # characters kept of one message on `/` and in health

_PATTERNS = (
    # Authorization headers and key=value / "key": "value" pairs naming a secret
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-*]{6,}"),
    re.compile(
        r"(?i)\b((?:x-)?api[_-]?key|(?:access|refresh|id|session)?[_-]?token|secret|password"
        r"|passwd|authorization)([\"']?\s*[:=]\s*[\"']?)([^\s\"'&,;]{4,})"
    ),
    # Provider key shapes, masked ones included (sk-admin-****...7QxZ, gsk_..., sk-ant-...)
    re.compile(r"\b(?:sk|pk|rk|gsk|xai)[-_][A-Za-z0-9._\-*]{4,}"),
    # Runs of mask characters a provider puts around a key's visible ends
    re.compile(r"[A-Za-z0-9_\-]*\*{3,}[A-Za-z0-9_.\-*]*"),
)
# Long opaque tokens (hex, base62/64, JWT segments): 32+ characters mixing letters and
# digits with a run of 20+ between separators (model names like gpt-4o-mini-2024-07-18 have
# short runs and are kept).
_OPAQUE = re.compile(r"[A-Za-z0-9_\-+/=.]{32,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-.]+")


def _opaque(m: re.Match[str]) -> str:
    token = m.group(0)
    digits = sum(c.isdigit() for c in token)
    letters = sum(c.isalpha() for c in token)
    longest = max(len(run) for run in re.split(r"[-_./]", token))
    return MASK if digits >= 4 and letters >= 4 and longest >= 20 else token


def _sub(m: re.Match[str]) -> str:
    if m.re is _PATTERNS[0]:
        return f"{m.group(1)} {MASK}"
    if m.re is _PATTERNS[1]:
        return f"{m.group(1)}{m.group(2)}{MASK}"
    return MASK


# The configured secret values themselves: a provider may echo a key whole, in any shape the
# patterns above do not know (#23: "hunter2-Plain-Secret" in a 401 body reached `/` and logs).
_KNOWN: set[str] = set()
_KNOWN_LOCK = threading.Lock()
_KNOWN_MIN = 8  # shorter values would mask ordinary words; no provider key is that short


def remember_secret(value: str) -> None:
    """Mask `value` wherever `redact` runs from now on (called for every key read)."""
    if len(value) >= _KNOWN_MIN:
        with _KNOWN_LOCK:
            _KNOWN.add(value)


def _mask_known(text: str) -> str:
    with _KNOWN_LOCK:
        known = sorted(_KNOWN, key=len, reverse=True)  # a key that contains another first
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(text: str, limit: int | None = SHORT) -> str:
    """`text` with secrets masked, cut to `limit` characters (None: not cut)."""
    text = _mask_known(text)
    for pattern in _PATTERNS:
        text = pattern.sub(_sub, text)
    text = _JWT.sub(MASK, text)
    text = _OPAQUE.sub(_opaque, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
