"""Secrets in URLs (a tracking URI or a storage URL with a password) kept out of what is
printed, tagged or logged."""
from __future__ import annotations

import re

# scheme://user:password@ -> scheme://user:***@ (a user name alone is not a secret)
_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]+):[^/@\s]*@")


def mask(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _PASSWORD.sub(r"\1:***@", text)
