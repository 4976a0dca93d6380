"""The project's error types: one base, :class:`UC2Error`, and one subclass per kind of bad input.

Every message names the file (and the key, key path or line inside it) and says what was expected, so
that a user holding a broken config, database or checkpoint can find the culprit without a debugger.
Entry points turn these (and only these) into a one-line ``error: ...`` exit; any other exception is a
programming error and keeps its traceback.

The ``ValueError``/``RuntimeError`` bases are kept so callers that caught the built-in types still work.
"""


class UC2Error(Exception):
    """Base of every error the project raises on purpose about its inputs or environment."""


class ConfigError(UC2Error, ValueError):
    """A config file, key or override is wrong; the message names the file or key path."""


class DataError(UC2Error, ValueError):
    """Bad or missing input data; the message names the file/key/line and what was expected."""


class DataKeyError(DataError, KeyError):
    """A key that is not in a database.

    Also a ``KeyError`` so that mapping-style callers (``except KeyError``) keep working.
    """

    # KeyError.__str__ would print the repr of the message (quoted); keep the plain text.
    __str__ = ValueError.__str__


class CheckpointError(UC2Error, RuntimeError):
    """A checkpoint or run directory is unusable; the message names the file and what is wrong."""


class DistributedError(UC2Error, RuntimeError):
    """A collective failed or timed out (a rank died or hangs); says which operation and how long."""
