"""The one error type for "keyguard cannot start as configured"."""


class StartupError(Exception):
    """A port is taken, a file unreadable...: a one-line message, exit 1, no traceback."""
