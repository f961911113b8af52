"""Secrets in URLs (a tracking URI or a storage URL with a password) kept out of what is
printed, tagged or logged."""
from __future__ import annotations

import re

# scheme://user:password@ -> scheme://user:***@ (a bare scheme://token@ is masked whole)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)([^/@\s:]+)(:[^/@\s]*)?@")


def mask(text: str) -> str:
    """`text` with the password (or token) of every URL in it replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m[1]}{m[2]}:***@" if m[3] else f"{m[1]}***@", text)
