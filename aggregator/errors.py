"""The one exception hierarchy of the project.

Every error the daemon expects to meet is an ``AggregatorError``; anything else escaping a
pass is a bug.  A per-source error (``SourceError`` and below) is recorded against that source
and never stops the daemon; a ``ConfigError`` or ``StoreError`` stops start-up with a clear
message.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(AggregatorError):
    """The configuration file is missing, unreadable or invalid.

    ``str(error)`` is one line naming the file, the source (when there is one) and the key.
    """

    def __init__(self, path: str, message: str, source: str | None = None, key: str | None = None):
        self.path = path
        self.source = source
        self.key = key
        self.message = message
        where = [path]
        if source is not None:
            where.append(f"source {source!r}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{': '.join(where)}: {message}")


class StoreError(AggregatorError):
    """The database cannot be used."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer version of the code."""


class SourceError(AggregatorError):
    """Something went wrong with one source; the daemon goes on with the others."""

    retryable = True

    def __init__(self, source: str, message: str):
        self.source = source
        self.message = message
        super().__init__(f"source {source!r}: {message}")

    def __reduce__(self):
        # Raised in worker processes too: it must cross back, attributes and all.
        return type(self).__new__, (type(self), *self.args), self.__dict__


class FetchError(SourceError):
    """The source could not be fetched (network, timeout, HTTP error status, limits)."""

    def __init__(self, source: str, message: str, status: int | None = None,
                 retry_after_s: float | None = None, unreachable: bool = False):
        self.status = status
        self.retry_after_s = retry_after_s
        self.unreachable = unreachable
        super().__init__(source, message)


class SourceGoneError(FetchError):
    """The server says the feed is gone for good (HTTP 410)."""

    retryable = False


class ParseError(SourceError):
    """The fetched document is not a feed we can read."""


class AppRequestError(AggregatorError):
    """A reading app's request that the Google Reader or Fever API cannot answer (``greader``,
    ``fever``): the message names the parameter and what was wrong, and the app gets a 400."""
