"""Load data pickles (CIFAR batches) without ever running code from the file.

A pickle may name any importable callable; a crafted one runs ``os.system`` on load.
The originals only hold dicts, lists, bytes and numpy arrays, so we resolve the few
numpy globals that rebuild arrays ourselves and refuse every other name.
"""

import _codecs
import io
import pickle
import struct
from typing import IO, Any

import numpy as np

from mergelab.data.errors import DatasetError, UnsafePickleError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# (module, name) -> object. Both spellings of numpy's core module: numpy<2 wrote
# ``numpy.core``, numpy>=2 writes ``numpy._core``. ``_frombuffer`` is what protocol 5
# uses for arrays; ``_codecs.encode`` is how Python 3 writes bytes at protocol 2.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS and refuses the rest before import.

    The pure-Python unpickler, as fast on data batches: the C one sizes its memo table by the
    largest index a file names, so a corrupt ``LONG_BINPUT`` makes it claim tens of GB.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def _load_bytearray8(self) -> None:
        # The stock loader zero-fills a buffer of the claimed size before reading into it.
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError(f"BYTEARRAY8 claims {size} bytes, the pickle ends first")
        self.append(bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def __init__(self, file: IO[bytes], *, source: str = "pickle", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name}; data pickles may "
                "only rebuild numpy arrays (allowed: "
                + ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
                + ")"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing persistent id {pid!r}")


def safe_pickle_load(file: IO[bytes] | bytes, *, source: str = "pickle") -> Any:
    """Unpickle plain data (``encoding="bytes"`` as for Python 2 pickles) or raise.

    ``source`` names the file in error messages.
    """
    stream = io.BytesIO(file) if isinstance(file, bytes | bytearray) else file
    try:
        return RestrictedUnpickler(stream, source=source, encoding="bytes").load()
    except UnsafePickleError:
        raise
    except Exception as err:  # garbage opcodes fail in any of a dozen ways, all the file's
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise DatasetError(
            f"{source}: not a readable data pickle ({type(err).__name__}: {reason})"
        ) from None
