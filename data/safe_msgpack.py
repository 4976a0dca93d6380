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


def _is_pickled_array(obj: dict) -> bool:
    """True for a msgpack-numpy array map whose payload msgpack-numpy would hand to ``pickle.loads``."""
    marker = obj.get(b"nd", obj.get("nd"))
    if marker is None:
        return False
    kind = obj.get(b"kind", obj.get("kind"))
    descr = obj.get(b"type", obj.get("type"))
    # kind 'O' is the pickle path; an 'O' type string is refused as well, whatever the kind says.
    return kind in (b"O", "O") or (isinstance(descr, (bytes, str)) and descr in (b"O", "O", b"|O", "|O"))


def _safe_hook(where: str, copy_arrays: bool):
    def hook(obj: dict) -> Any:
        if _is_pickled_array(obj):
            raise PickledRecordError(
                f"{where}: holds a pickled object array; refused without unpickling (a database record "
                f"must be numeric data, never pickled Python objects)")
        value = msgpack_numpy.decode(obj)
        if copy_arrays and isinstance(value, np.ndarray):
            # decoded arrays are read-only views of the message buffer; torch warns on or refuses those
            return value.copy()
        return value
    return hook


def unpack_numpy_msgpack(data: bytes, where: str, *, copy_arrays: bool = False,
                         strict_map_key: bool = True) -> Any:
    """Decode msgpack(-numpy) bytes; pickled arrays raise :class:`PickledRecordError` naming ``where``.

    Other decoding failures propagate as msgpack/numpy raise them, for the caller to wrap.
    """
    return msgpack.unpackb(data, raw=False, strict_map_key=strict_map_key,
                           object_hook=_safe_hook(where, copy_arrays))
