"""msgpack-numpy decoding that never unpickles.

``msgpack_numpy.decode`` turns an array record of kind ``b'O'`` (object dtype) into ``pickle.loads(data)``:
a crafted txt_db or img_db record would run code the moment it is read. Every reader of msgpack data in
this project decodes through :func:`unpack_numpy_msgpack`, whose object hook refuses such records
*before* msgpack-numpy sees them. Plain numeric and structured arrays decode as before.
"""
from __future__ import annotations

from typing import Any

import msgpack
import msgpack_numpy
import numpy as np

from utils.errors import DataError


class PickledRecordError(DataError):
    """A msgpack record holds a pickled (object-dtype) array; it is refused, never unpickled."""


class _PickledArray(Exception):
    """Raised inside the object hook, which does not know which db/key it is decoding."""


def _refuse_pickles(obj: dict) -> Any:
    """Object hook: msgpack-numpy decoding, except for arrays it would unpickle.

    msgpack-numpy only decodes maps with the bytes key ``b'nd'`` (it writes bin keys), so str keys need
    no check. Kind ``b'O'`` is its pickle path; an object type string is refused too, whatever the kind.
    """
    if b"nd" in obj and (obj.get(b"kind") == b"O" or obj.get(b"type") in (b"O", b"|O", "O", "|O")):
        raise _PickledArray
    return msgpack_numpy.decode(obj)


def _refuse_pickles_copy(obj: dict) -> Any:
    """As :func:`_refuse_pickles`, with arrays copied: decoded arrays are read-only views of the message
    buffer, and torch warns on or refuses non-writable arrays."""
    value = _refuse_pickles(obj)
    return value.copy() if isinstance(value, np.ndarray) else value


def unpack_numpy_msgpack(data: bytes, where: str, *, copy_arrays: bool = False,
                         strict_map_key: bool = True) -> Any:
    """Decode msgpack(-numpy) bytes; pickled arrays raise :class:`PickledRecordError` naming ``where``.

    Other decoding failures propagate as msgpack/numpy raise them, for the caller to wrap.
    """
    hook = _refuse_pickles_copy if copy_arrays else _refuse_pickles
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=strict_map_key, object_hook=hook)
    except _PickledArray:
        raise PickledRecordError(
            f"{where}: holds a pickled object array; refused without unpickling (a database record "
            f"must be numeric data, never pickled Python objects)") from None
