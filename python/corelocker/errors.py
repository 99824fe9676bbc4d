"""corelocker's exceptions. The native module raises these with the library's messages, the same
text the command line prints after "corelocker: error:"."""

__all__ = ["Error", "UsageError", "FormatError", "KeyMismatch", "AuthenticationError", "IoError"]


class Error(RuntimeError):
    """Base of every error corelocker raises on purpose (the command line's exit code 1)."""


class UsageError(Error, ValueError):
    """An invalid argument: an unknown criterion, a ratio outside [0, 1] (exit code 2)."""


class FormatError(Error):
    """A malformed or truncated key file, or a module with nothing to lock."""


class KeyMismatch(Error):
    """The key belongs to another model, or to another state of this one (already unlocked, a
    tier key out of order)."""


class AuthenticationError(Error):
    """A wrong passphrase or secret, or an altered encrypted key (exit code 3)."""


class IoError(Error, OSError):
    """A file could not be read or written."""


for _cls in (Error, UsageError, FormatError, KeyMismatch, AuthenticationError, IoError):
    _cls.__module__ = "corelocker"
del _cls
