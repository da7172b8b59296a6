"""Data pickles from disk: garbage is one DatasetError line, never another exception, and a
corrupt memo index cannot make the unpickler claim gigabytes."""

from __future__ import annotations

import pickle
import random
import tracemalloc

import numpy as np
import pytest

from mergelab.data import DatasetError, safe_pickle_load

BATCH = {
    b"batch_label": b"training batch 1 of 5",
    b"labels": [3, 1, 4, 1, 5],
    b"data": np.arange(5 * 12, dtype=np.uint8).reshape(5, 12),
}


@pytest.mark.parametrize(
    ("payload", "loads"),
    [
        # EMPTY_DICT, LONG_BINPUT 20_000_000: the C unpickler grows its memo table to the
        # index named (hundreds of MB here; a corrupt byte can name 2**31)
        (b"\x80\x02}r" + (20_000_000).to_bytes(4, "little") + b".", True),
        # BYTEARRAY8 claiming 3 GB: the stock loader zero-fills that much before reading
        (b"\x80\x05\x96" + (3_000_000_000).to_bytes(8, "little") + b"abc.", False),
    ],
)
def test_sizes_claimed_by_a_corrupt_pickle_cost_no_memory(payload: bytes, loads: bool) -> None:
    tracemalloc.start()
    try:
        if loads:
            assert safe_pickle_load(payload) == {}
        else:
            with pytest.raises(DatasetError, match="BYTEARRAY8 claims 3000000000 bytes"):
                safe_pickle_load(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_protocol_5_bytearrays_still_load() -> None:
    assert safe_pickle_load(pickle.dumps({b"x": bytearray(b"abc")}, protocol=5)) == {
        b"x": bytearray(b"abc")
    }


@pytest.mark.parametrize("protocol", [2, 5])
def test_corrupt_pickles_fail_as_one_dataset_error(protocol: int) -> None:
    data = pickle.dumps(BATCH, protocol=protocol)
    rng = random.Random(protocol)
    refused = 0
    for _ in range(400):
        corrupt = bytearray(data)
        if rng.random() < 0.7:
            for _ in range(rng.randint(1, 3)):
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        else:
            del corrupt[rng.randrange(len(corrupt)) :]
        try:
            safe_pickle_load(bytes(corrupt), source="data_batch_1")
        except DatasetError as exc:  # any other exception type fails the test
            assert str(exc).startswith("data_batch_1: ") and "\n" not in str(exc)
            refused += 1
    assert refused > 200
