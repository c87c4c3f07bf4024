"""A restricted unpickler for the official CIFAR-10 batches: plain containers and uint8 numpy arrays only.

``pickle.loads`` calls whatever a file names (``os.system`` through ``__reduce__``), so a crafted
``data_batch_1`` would run code while being read. This unpickler resolves only the few globals the
release uses — numpy's array reconstruction (``_reconstruct`` / ``_frombuffer``, ``ndarray``,
``dtype``) and ``_codecs.encode`` (how Python 3 writes bytes at protocol 2) — each wrapped so that it
can only build a uint8 array or bytes. Any other global is refused before anything is called.
Dicts, lists, tuples, bytes, str, int, float, bool and None need no global at all.
"""
from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core


class _NdarrayName:
    """Stands for ``numpy.ndarray`` in a pickle: usable only as ``_reconstruct``'s first argument, so a
    pickle cannot call ``ndarray(shape, dtype)`` itself (an object array, or a terabyte one)."""


def _uint8_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(name, align, copy)`` for a uint8 dtype; refuses every other dtype (object arrays)."""
    if isinstance(name, bytes):  # a Python 2 pickle read with encoding="bytes"
        name = name.decode("ascii", "replace")
    if not isinstance(name, str) or name not in ("u1", "uint8", "|u1"):
        raise pickle.UnpicklingError(f"refused numpy dtype {name!r} (only uint8 arrays are allowed)")
    return np.dtype("u1", bool(align), bool(copy))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")``: an empty placeholder whose state is set afterwards."""
    if cls is not _NdarrayName or shape not in ((0,), [0]):
        raise pickle.UnpicklingError(f"refused numpy _reconstruct({cls!r}, {shape!r}) (only an empty ndarray "
                                     "placeholder is allowed)")
    return np.ndarray((0,), dtype=np.uint8)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer``: a uint8 array over the pickled bytes (sized by the bytes read)."""
    if not isinstance(dtype, np.dtype) or dtype != np.uint8 or not isinstance(buffer, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"refused numpy _frombuffer of dtype {dtype!r} (only uint8 arrays are allowed)")
    array = np.frombuffer(buffer, dtype=np.uint8)  # raises if shape does not fit the bytes
    return array.reshape(shape, order="F" if order == "F" else "C").copy()


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(str, "latin1")``: how a Python 3 pickler writes bytes at protocols 0-2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r}) (only latin1 text -> bytes)")
    return codecs.encode(text, "latin1")


_ALLOWED: Dict[Tuple[str, str], Callable[..., Any]] = {
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _uint8_dtype,
    ("_codecs", "encode"): _latin1_bytes,
    **{(f"{core}.multiarray", "_reconstruct"): _reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _frombuffer for core in _NUMPY_CORE},
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (a CIFAR-10 batch holds only dicts, lists, bytes, str, "
                "int and uint8 numpy arrays)") from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` as a CIFAR-10 batch (Python 2 strings read as bytes); UnpicklingError for any
    global outside the allowed few, raised before that global is called."""
    return _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
