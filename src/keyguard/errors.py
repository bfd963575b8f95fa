"""Every error type keyguard raises on purpose, in one tree.

::

    KeyguardError                    base: a one-line message, never a traceback for a user
    ├── SettingsError (ValueError)   a KEYGUARD_* setting or flag has a bad value      exit 2
    ├── StartupError                 cannot start as configured (port taken, file)     exit 1
    ├── StoreError                   the key store could not answer (down, timeout,
    │                                unreadable record): a Check fails closed (503)    exit 1
    └── KeyringError                 a key change was refused; nothing was changed
        ├── InvalidChange            bad option or combination of options              exit 2
        ├── UnknownKey (LookupError) no key with that id                               exit 1
        ├── UnknownPrice (LookupError) no price for that model pattern                 exit 1
        ├── UnknownToken (LookupError) no admin token with that id                     exit 1
        ├── UnknownPlan (LookupError) no plan with that name                           exit 1
        └── PlanInUse                a plan that still has keys cannot be deleted      exit 1

    BackendError                     inside the store only: what a Redis connection
    ├── ReplyError                   raised (an error reply such as NOSCRIPT) …
    └── ConnectionFailed             … or a failed, closed or timed-out connection;
                                     the store maps both, in one place, to StoreError

``cli`` turns a KeyguardError into ``keyguard: error: <message>`` and the exit code
above; the admin API (``admin/problems.py``) turns them into problem+json with the
same message: InvalidChange 400, UnknownKey / UnknownPrice / UnknownToken / UnknownPlan
404, another KeyringError (PlanInUse, a collision) 409, StoreError 503.
"""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class KeyguardError(Exception):
    """Base of keyguard's own errors; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_RUNTIME


class SettingsError(KeyguardError, ValueError):
    """A setting has a bad value; the message names it and says what is expected."""

    exit_code = EXIT_USAGE


class StartupError(KeyguardError):
    """A port is taken, a file unreadable...: a one-line message, exit 1, no traceback."""


class StoreError(KeyguardError):
    """The store could not answer (connection, timeout, cluster down, unreadable record)."""


class KeyringError(KeyguardError):
    """A key change was refused; nothing was changed."""


class InvalidChange(KeyringError, ValueError):
    """The options of a change are wrong or contradict each other."""

    exit_code = EXIT_USAGE


class UnknownKey(KeyringError, LookupError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id!r}")
        self.key_id = key_id


class UnknownPrice(KeyringError, LookupError):
    def __init__(self, pattern: str) -> None:
        super().__init__(f"no price for model {pattern!r}")
        self.pattern = pattern


class UnknownToken(KeyringError, LookupError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"no admin token with id {token_id!r}")
        self.token_id = token_id


class UnknownPlan(KeyringError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no plan named {name!r}")
        self.name = name


class PlanInUse(KeyringError):
    """A plan that still has keys cannot be deleted."""

    def __init__(self, name: str, keys: int) -> None:
        super().__init__(
            f"plan {name!r} still has {keys} key(s); move them to another plan"
            " (keys set ID --plan NAME) or revoke them first"
        )
        self.name = name
        self.keys = keys


class BackendError(Exception):
    """Raised by a Redis connection; never leaves the store (see store/redis.py)."""


class ReplyError(BackendError):
    """Redis answered with an error (for example NOSCRIPT)."""


class ConnectionFailed(BackendError, ConnectionError):
    """The connection failed, closed, or a reply did not come in time."""
