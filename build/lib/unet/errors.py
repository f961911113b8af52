"""The one exception type for a user's mistake: bad data, a bad parameter, a missing run."""


class UserError(Exception):
    """Shown to the user as one line (no traceback): what is wrong, where, and what to do."""
