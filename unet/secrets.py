"""Secrets in URLs (a tracking URI or a storage URL with a password) kept out of what is
printed, tagged or logged."""
from __future__ import annotations

import logging
import re

# scheme://[user][:password]@host: the last @ before the host ends the user info, so that a raw
# @ in a password (p@ss) is masked whole.
_USER_INFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s?#]*)@(?=[^/\s@]*(?:[/\s?#]|$))")
# ?password=..., &token=...: a secret passed as a query parameter.
_QUERY = re.compile(r"([?&](?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)"
                    r"[^&\s#]*", re.IGNORECASE)
# A user name that is a token (GitHub's ghp_..., a cloud key): long, letters and digits.
_TOKEN = re.compile(r"(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-.]{20,}")


def mask(text: str) -> str:
    """`text` with every URL's password (scheme://user:***@host, also an empty user's and one
    holding a raw @), a token used as the user name (scheme://***@host) and secret query
    parameters (?password=***) replaced. A plain user name is no secret and stays."""
    def user_info(match: re.Match) -> str:
        info = match.group(2)
        if ":" in info:
            info = info.split(":", 1)[0] + ":***"
        elif _TOKEN.fullmatch(info):
            info = "***"
        return f"{match.group(1)}{info}@"
    return _QUERY.sub(r"\1***", _USER_INFO.sub(user_info, text))


def mask_logging() -> None:
    """Every log record made from now on, by any logger in any thread (MLflow's system-metrics
    thread prints the tracking URL when the server goes away), carries its message masked.
    Done where records are made (the record factory), so that no handler added later misses
    it; idempotent."""
    make = logging.getLogRecordFactory()
    if getattr(make, "masks_secrets", False):
        return

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:   # a malformed call: logging reports it when the record is emitted
            return record
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record
    masked_record.masks_secrets = True
    logging.setLogRecordFactory(masked_record)
