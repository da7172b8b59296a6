"""Stored dtypes, named as safetensors names them, and their conversion to and from the
float32/float64 arrays that merges compute in.

The merge engine works in NumPy: it starts in a tenth of a second and a fraction of the
memory of ``import torch``, which for a merge dominated by reading and writing is most of the
cost. bfloat16 is stored as raw uint16 and converted with bit operations (round to nearest
even, as torch does); float8 goes through torch, imported only when such tensors appear.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STORAGE: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),
    "F8_E4M3": np.dtype(np.uint8),
    "F8_E5M2": np.dtype(np.uint8),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
# Every dtype the safetensors format defines (as the ``safetensors`` library lists them);
# the ones missing from STORAGE (sub-byte floats, float8 variants, complex) are valid
# files mergelab cannot merge.
SAFETENSORS_DTYPES = frozenset(
    {*STORAGE, "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"}
)
FLOATS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

# Names a user may type for --dtype.
DTYPE_NAMES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "fp64": "F64",
    "fp32": "F32",
    "fp16": "F16",
    "bf16": "BF16",
    "half": "F16",
}
READABLE = {v: k for k, v in reversed(DTYPE_NAMES.items())}
TORCH_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def parse_dtype(name: str) -> str:
    """A user-facing dtype name (``bfloat16``) as its safetensors name (``BF16``)."""
    key = name.strip()
    if key.upper() in FLOATS:
        return key.upper()
    try:
        return DTYPE_NAMES[key.lower()]
    except KeyError:
        known = ", ".join(sorted(DTYPE_NAMES))
        raise ValueError(f"unknown dtype {name!r}; choose one of: {known}") from None


def dtype_name(dtype: str) -> str:
    return READABLE.get(dtype, TORCH_NAMES.get(dtype, dtype))


def itemsize(dtype: str) -> int:
    return STORAGE[dtype].itemsize


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def compute_dtype(dtypes: set[str]) -> np.dtype:
    return np.dtype(np.float64) if "F64" in dtypes else np.dtype(np.float32)


def to_compute(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """Convert stored values (``raw``, storage dtype) into ``out`` (float32 or float64)."""
    if dtype == "BF16":
        if out.dtype == np.float32:
            bits = out.view(np.uint32)
            np.copyto(bits, raw, casting="unsafe")
            np.left_shift(bits, 16, out=bits)
        else:
            out[...] = to_compute(raw, dtype, np.empty(raw.shape, np.float32))
        return out
    if dtype in ("F8_E4M3", "F8_E5M2"):
        import torch

        values = torch.from_numpy(raw).view(getattr(torch, TORCH_NAMES[dtype])).float()
        np.copyto(out, values.numpy(), casting="unsafe")
        return out
    np.copyto(out, raw, casting="unsafe")
    return out


# torch.promote_types among the float dtypes a merge reads: the wider, and float32 for
# float16 with bfloat16 (neither holds the other).
_WIDTH = {"F8_E4M3": 0, "F8_E5M2": 0, "F16": 1, "BF16": 1, "F32": 2, "F64": 3}


def promoted(dtypes: set[str]) -> str:
    """The dtype torch computes a mix of ``dtypes`` in (mergekit's compute dtype when a
    recipe names none)."""
    widest = max(dtypes, key=lambda d: _WIDTH.get(d, 2))
    if len(dtypes) > 1 and _WIDTH.get(widest, 2) < 2:
        return "F32"
    return widest


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32/64 ``values`` in place to the nearest value of ``dtype`` (kept in
    their own dtype): what torch does after each operation on tensors of ``dtype``, so a
    computation that calls this where torch rounds gives torch's low-precision results."""
    if dtype == "F64" or (dtype == "F32" and values.dtype == np.float32):
        return values  # already in that dtype
    if dtype == "BF16" and values.dtype == np.float32 and values.flags.c_contiguous:
        # Round to nearest even on the bits, in place: one scratch array, no torch.
        bits = values.reshape(-1).view(np.uint32)
        odd = np.right_shift(bits, np.uint32(16))
        np.bitwise_and(odd, np.uint32(1), out=odd)
        np.add(odd, np.uint32(0x7FFF), out=odd)
        np.add(bits, odd, out=bits)
        np.bitwise_and(bits, np.uint32(0xFFFF0000), out=bits)
        return values
    if dtype == "F16" and values.dtype == np.float32 and values.flags.c_contiguous:
        import torch  # its float16 conversion is vectorised: 6x NumPy's

        held = torch.from_numpy(values)
        held.copy_(held.half())
        return values
    to_compute(from_compute(values, dtype), dtype, values)
    return values


def from_compute(values: np.ndarray, dtype: str) -> np.ndarray:
    """Values computed in float32/64 as an array in the storage dtype of ``dtype``."""
    if dtype == "BF16":
        bits = values.astype(np.float32, copy=False).view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return (rounded >> np.uint32(16)).astype(np.uint16)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        return t.to(getattr(torch, TORCH_NAMES[dtype])).view(torch.uint8).numpy()
    return values.astype(STORAGE[dtype], copy=False)


def from_torch(dtype: Any) -> str:
    """The safetensors name of a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    for key, value in TORCH_NAMES.items():
        if value == name:
            return key
    raise TypeError(f"unsupported tensor dtype {dtype}")


def to_torch(dtype: str) -> Any:
    import torch

    return getattr(torch, TORCH_NAMES[dtype])
