"""Errors raised by the data layer.

Every message names the file (and the key or line inside it) and says what was expected, so that a user
holding a broken database can find the culprit without a debugger.
"""


class DataError(ValueError):
    """Bad or missing input data; the message names the file/key/line and what was expected."""


class DataKeyError(DataError, KeyError):
    """A key that is not in a database.

    Also a ``KeyError`` so that mapping-style callers (``except KeyError``) keep working.
    """

    # KeyError.__str__ would print the repr of the message (quoted); keep the plain text.
    __str__ = ValueError.__str__
