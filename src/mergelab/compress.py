"""CART's compression mode: T task models stored as their average plus rank-k factors.

CART (Choi et al. 2024, arXiv:2412.12153) observes that the centred task vectors
``d_t = theta_t - theta_avg`` are well approximated at low rank. So a folder holds

* ``average.safetensors``: theta_avg (every tensor, in the inputs' dtype), whose header
  metadata carries the manifest (``mergelab.compressed``: tasks, options, per-tensor layout);
* ``task-001.safetensors`` ...: for each task, ``NAME:us`` = U_k S_k ``[m, k]`` and
  ``NAME:vt`` = V_k^T ``[k, n]`` of SVD_k(d_t) for every tensor in the low-rank scope
  (:func:`mergelab.methods.svd.matrix_shape`: 2-D weights by name pattern, conv kernels
  reshaped with ``conv``), and, in full under its own name, every other tensor of that
  task that differs from the stored average (biases and norms usually do; integer tensors
  that agree do not).

Expanding task t gives ``theta_avg + U_k S_k V_k^T`` on the low-rank tensors (Frobenius
error = sqrt(sum_{j>k} s_j^2) of d_t, up to rounding to the storage dtype) and the exact
tensor everywhere else. Every file is staged and moved into place together, the average
(holding the manifest) last. Compression streams: each tensor's results go to scratch files
in the staging folder as soon as they are computed, so memory is one tensor's work.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergelab import __version__
from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint, TensorInfo
from mergelab.io.dtypes import STORAGE, from_compute, is_float, to_compute
from mergelab.io.open import open_checkpoint
from mergelab.io.output import Output
from mergelab.io.writer import SafetensorsWriter
from mergelab.methods.base import seeded_generator
from mergelab.methods.svd import (
    DEFAULT_EXCLUDE,
    energy_rank,
    matrix_shape,
    randomized_svd,
    rank_for,
)

FORMAT = 1
AVERAGE_FILE = "average.safetensors"
MANIFEST_KEY = "mergelab.compressed"
US, VT = ":us", ":vt"


def task_file(index: int) -> str:
    """File of task ``index`` (1-based)."""
    return f"task-{index:03d}.safetensors"


@dataclass
class CompressOptions:
    """How task vectors are truncated (same meaning as ``cart``'s parameters)."""

    rank: float = 0.1
    energy: float | None = None
    pattern: str = "."
    exclude: str = DEFAULT_EXCLUDE
    conv: bool = False
    svd: str = "full"
    oversample: int = 10
    power_iters: int = 2
    seed: int = 0

    def check(self) -> None:
        import re

        if not 0 < self.rank <= 1:
            raise MergeError(f"--rank {self.rank}: must be a fraction in (0, 1]")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise MergeError(f"--energy {self.energy}: must be a fraction in (0, 1]")
        if self.svd not in ("full", "randomized"):
            raise MergeError(f"--svd {self.svd}: must be full or randomized")
        for option, value in (("--pattern", self.pattern), ("--exclude", self.exclude)):
            try:
                re.compile(value)
            except re.error as exc:
                raise MergeError(f"{option} {value!r}: not a regular expression ({exc})") from None


@dataclass
class CompressSummary:
    """What :func:`compress` wrote, with each task's reconstruction error."""

    out: Path
    n_tasks: int
    input_bytes: int
    output_bytes: int
    low_rank_tensors: int
    # Per task: ||theta_t - rebuilt_t||_F / ||theta_t - reference||_F, where the reference is
    # the base model when given (the share of the fine-tuning lost), else theta_avg.
    relative_errors: list[float] = field(default_factory=list)

    def describe(self) -> str:
        ratio = self.output_bytes / max(self.input_bytes, 1)
        against = "of each task vector"
        lines = [
            f"wrote {self.out}: {self.n_tasks} tasks, {self.low_rank_tensors} low-rank tensors, "
            f"{self.output_bytes / 1e6:.1f} MB for {self.input_bytes / 1e6:.1f} MB of inputs "
            f"({ratio:.1%})",
            f"relative reconstruction error ({against}):",
        ]
        lines += [f"  task {i + 1}: {e:.4g}" for i, e in enumerate(self.relative_errors)]
        return "\n".join(lines)


def _read(ckpt: Checkpoint, name: str, dtype: np.dtype) -> np.ndarray:
    info = ckpt.infos[name]
    out = np.empty(info.numel, dtype=dtype)
    to_compute(ckpt.read(name), info.dtype, out)
    if out.size and not np.isfinite(out).all():
        raise MergeError(f"{ckpt.label}: tensor {name!r} contains NaN or Inf")
    return out.reshape(info.shape)


def _check_same(models: Sequence[Checkpoint], base: Checkpoint | None) -> None:
    from mergelab.engine import check_inputs

    check_inputs(models, base)
    for name, info in models[0].infos.items():
        dtypes = {m.infos[name].dtype for m in models}
        if len(dtypes) > 1:
            raise MergeError(
                f"tensor {name!r} has different dtypes in the models ({', '.join(sorted(dtypes))});"
                f" compress needs one dtype per tensor"
            )
        if info.dtype in ("F8_E4M3", "F8_E5M2"):
            raise MergeError(f"tensor {name!r}: float8 checkpoints cannot be compressed")


def compress(
    models: Sequence[str | Path],
    out: str | Path,
    *,
    base: str | Path | None = None,
    options: CompressOptions | None = None,
    force: bool = False,
    key: str | None = None,
    strip_prefix: str | None = None,
) -> CompressSummary:
    """Compress ``models`` (at least two) into the folder ``out``; see the module docstring.

    ``base`` is optional: CART's centre is the models' average, so the base is not stored;
    when given it is checked against the models and the reported error is relative to each
    task vector theta_t - theta_base. Memory: one tensor of every model at a time and its
    SVDs; results go to scratch files in the staging folder as they are computed (the files'
    headers, manifest included, are known only at the end), so disk I/O of the output is
    doubled but memory does not grow with the model.
    """
    options = options or CompressOptions()
    options.check()
    if len(models) < 2:
        raise MergeError("compress needs at least two models (one average plus factors each)")
    out = Path(out)
    if out.suffix.lower() == ".safetensors":
        raise MergeError(f"--out {out}: compress writes a folder; give a folder name")
    n = len(models)
    names = [*(task_file(i + 1) for i in range(n)), AVERAGE_FILE]
    paths = [Path(m) for m in models] + ([Path(base)] if base is not None else [])
    opened: list[Checkpoint] = []
    try:
        for path in paths:
            opened.append(open_checkpoint(path, key=key, strip_prefix=strip_prefix))
        ckpts, base_ckpt = opened[:n], (opened[n] if base is not None else None)
        inputs = [*paths, *(p for c in opened for p in c.files)]
        # Refuses an input in the way, and someone else's files, before any work.
        target = Output(out, names, single=False, force=force, inputs=inputs)
        _check_same(ckpts, base_ckpt)
        return _compress(ckpts, base_ckpt, target, options, models, base)
    finally:
        for ckpt in opened:
            ckpt.close()


def _compress(
    ckpts: list[Checkpoint],
    base: Checkpoint | None,
    target: Output,
    options: CompressOptions,
    model_paths: Sequence[str | Path],
    base_path: str | Path | None,
) -> CompressSummary:
    n = len(ckpts)
    errors = np.zeros(n)  # squared Frobenius error of each rebuilt task
    norms = np.zeros(n)  # squared norm of the reference task vectors
    layout: dict[str, Any] = {}
    infos = list(ckpts[0].infos.values())
    spills: list[_Spill] = []
    staged = False
    try:
        target.open()
        staged = True
        # Results go to scratch files in the staging folder as soon as each tensor is done:
        # the files' headers (which tensors differ, energy ranks, the manifest) are known
        # only at the end, and nothing but one tensor's work is held in memory meanwhile.
        tasks = [_Spill(target.path(f".{task_file(i + 1)}.part")) for i in range(n)]
        averages = _Spill(target.path(f".{AVERAGE_FILE}.part"))
        spills = [*tasks, averages]
        for info in infos:
            entry, average = _compress_tensor(info, ckpts, base, options, tasks, errors, norms)
            layout[info.name] = entry
            averages.add(info, average)
        manifest = {
            "format": FORMAT,
            "mergelab": __version__,
            "tasks": [
                {"file": task_file(i + 1), "model": str(Path(m).resolve())}
                for i, m in enumerate(model_paths)
            ],
            "base": None if base_path is None else str(Path(base_path).resolve()),
            "options": options.__dict__,
            "tensors": layout,
        }
        for i, spill in enumerate(tasks):
            spill.copy_to(target.path(task_file(i + 1)), {"mergelab.compressed_task": str(i + 1)})
        averages.copy_to(target.path(AVERAGE_FILE), {MANIFEST_KEY: json.dumps(manifest)})
        for spill in spills:
            spill.close()
        target.commit()
    except BaseException:
        for spill in spills:
            spill.close()
        if staged:
            target.abort()
        raise
    folder = target.folder
    output_bytes = sum((folder / name).stat().st_size for name in target.names)
    input_bytes = sum(sum(i.nbytes for i in c.infos.values()) for c in ckpts)
    relative = [
        math.sqrt(e / v) if v > 0 else math.sqrt(e) for e, v in zip(errors, norms, strict=True)
    ]
    return CompressSummary(
        out=folder,
        n_tasks=n,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        low_rank_tensors=sum(1 for e in layout.values() if e["kind"] == "low_rank"),
        relative_errors=relative,
    )


def _compress_tensor(
    info: TensorInfo,
    ckpts: list[Checkpoint],
    base: Checkpoint | None,
    options: CompressOptions,
    tasks: list[_Spill],
    errors: np.ndarray,
    norms: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray]:
    """One tensor: its stored average, what each task keeps (added to its spill), and the
    manifest entry."""
    name, n = info.name, len(ckpts)
    entry: dict[str, Any] = {"shape": list(info.shape), "dtype": info.dtype}
    if not is_float(info.dtype):
        first = ckpts[0].read(name)
        entry["kind"] = "full"
        entry["stored"] = []
        for t, ckpt in enumerate(ckpts):
            value = first if t == 0 else ckpt.read(name)
            if t and not np.array_equal(value, first):
                tasks[t].add(info, value)
                entry["stored"].append(t + 1)
        return entry, first
    dtype = np.dtype(np.float64) if info.dtype == "F64" else np.dtype(np.float32)
    stack = np.stack([_read(c, name, dtype) for c in ckpts])
    average = stack.mean(axis=0)
    stored_average = from_compute(average.reshape(-1), info.dtype)
    rebuilt_average = np.empty(average.size, dtype=dtype)
    to_compute(stored_average, info.dtype, rebuilt_average)
    rebuilt_average = rebuilt_average.reshape(info.shape)
    reference = None if base is None else _read(base, name, dtype)
    for t in range(n):
        diff = stack[t] - (reference if reference is not None else average)
        norms[t] += float(np.vdot(diff, diff))
    shape = matrix_shape(name, tuple(info.shape), options.pattern, options.exclude, options.conv)
    if shape is None:
        entry["kind"] = "full"
        entry["stored"] = []
        for t, ckpt in enumerate(ckpts):
            raw = ckpt.read(name)
            if not np.array_equal(raw, stored_average):
                tasks[t].add(info, raw)
                entry["stored"].append(t + 1)
        return entry, stored_average
    for suffix in (US, VT):
        if name + suffix in ckpts[0].infos:
            raise MergeError(
                f"tensor {name!r}: the factor name {name + suffix!r} is taken by another "
                f"tensor of the model"
            )
    m, k_cols = shape
    r = min(m, k_cols)
    cap = rank_for(r, options.rank)
    entry["kind"] = "low_rank"
    entry["matrix"] = [m, k_cols]
    entry["ranks"] = []
    for t in range(n):
        d = (stack[t] - rebuilt_average).reshape(m, k_cols)
        if options.svd == "randomized":
            u, s, vt = randomized_svd(
                d,
                cap,
                oversample=options.oversample,
                power_iters=options.power_iters,
                rng=seeded_generator(options.seed, name, t),
            )
        else:
            u, s, vt = np.linalg.svd(d, full_matrices=False)
            u, s, vt = u[:, :cap], s[:cap], vt[:cap]
        if options.energy is not None:
            keep = energy_rank(s, float(np.vdot(d, d)), options.energy)
            u, s, vt = u[:, :keep], s[:keep], vt[:keep]
        us = from_compute(np.ascontiguousarray(u * s).reshape(-1), info.dtype)
        vt_stored = from_compute(np.ascontiguousarray(vt).reshape(-1), info.dtype)
        low = _as_compute(us, info.dtype, dtype).reshape(u.shape) @ _as_compute(
            vt_stored, info.dtype, dtype
        ).reshape(vt.shape)
        rebuilt = from_compute((rebuilt_average.reshape(m, k_cols) + low).reshape(-1), info.dtype)
        back = np.empty(rebuilt.size, dtype=dtype)
        to_compute(rebuilt, info.dtype, back)
        miss = stack[t].reshape(-1) - back
        errors[t] += float(np.vdot(miss, miss))
        tasks[t].add(TensorInfo(name + US, u.shape, info.dtype), us)
        tasks[t].add(TensorInfo(name + VT, vt.shape, info.dtype), vt_stored)
        entry["ranks"].append(int(s.size))
    return entry, stored_average


class _Spill:
    """Raw arrays (in their storage dtype) appended to a scratch file, then copied, a block
    at a time, into a safetensors file once its header is known: memory stays at one block
    whatever the file's size."""

    BLOCK_BYTES = 16 * 1024**2

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w+b")  # noqa: SIM115 - closed by close(), after copy_to
        self.entries: dict[str, tuple[TensorInfo, int]] = {}
        self.size = 0

    def add(self, info: TensorInfo, raw: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(raw).reshape(-1)).cast("B")
        self.file.write(data)
        self.entries[info.name] = (info, self.size)
        self.size += data.nbytes

    def copy_to(self, path: Path, metadata: dict[str, str]) -> None:
        """Write the safetensors file ``path`` (atomically) from the scratch file."""
        self.file.flush()
        fd = self.file.fileno()
        writer = SafetensorsWriter(
            path, [info for info, _ in self.entries.values()], metadata=metadata
        )
        try:
            for name, (info, offset) in self.entries.items():
                dtype = STORAGE[info.dtype]
                step = max(1, self.BLOCK_BYTES // dtype.itemsize)
                for start in range(0, info.numel, step):
                    count = min(step, info.numel - start)
                    block = np.empty(count, dtype=dtype)
                    view = memoryview(block).cast("B")
                    got = os.preadv(fd, [view], offset + start * dtype.itemsize)
                    if got != view.nbytes:
                        raise MergeError(f"{self.file.name}: scratch file ended early")
                    writer.write(name, start, block)
        except BaseException:
            writer.abort()
            raise
        writer.close()

    def close(self) -> None:
        self.file.close()


def _as_compute(raw: np.ndarray, stored: str, dtype: np.dtype) -> np.ndarray:
    out = np.empty(raw.shape, dtype=dtype)
    to_compute(raw, stored, out)
    return out


# -- expanding -------------------------------------------------------------------------------


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest stored in ``folder``'s average file (one error line if it is not there)."""
    from mergelab.io.safetensors_file import read_header

    path = Path(folder) / AVERAGE_FILE
    if not path.is_file():
        raise MergeError(f"{folder}: no {AVERAGE_FILE}; not a folder written by mergelab compress")
    metadata = read_header(path)[2]
    text = metadata.get(MANIFEST_KEY)
    if text is None:
        raise MergeError(f"{path}: no {MANIFEST_KEY} entry; not written by mergelab compress")
    try:
        manifest = json.loads(text)
    except ValueError:
        raise MergeError(f"{path}: the {MANIFEST_KEY} entry is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MergeError(f"{path}: unknown compressed format (expected {FORMAT})")
    return manifest


def expand(folder: str | Path, task: int, out: str | Path, *, force: bool = False) -> Path:
    """Rebuild task ``task`` (1-based, in the order given to compress) into ``out`` (a
    ``.safetensors`` file or a folder): theta_avg + U S V^T, or the stored tensor."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    tasks = manifest["tasks"]
    if not 1 <= task <= len(tasks):
        raise MergeError(f"--task {task}: {folder} holds tasks 1..{len(tasks)}")
    average = open_checkpoint(folder / AVERAGE_FILE)
    task_path = folder / tasks[task - 1]["file"]
    try:
        factors = open_checkpoint(task_path)
    except BaseException:
        average.close()
        raise
    try:
        layout: dict[str, Any] = manifest["tensors"]
        infos = [TensorInfo(n, tuple(e["shape"]), e["dtype"]) for n, e in layout.items()]
        inputs = [folder, folder / AVERAGE_FILE, task_path]
        writer = SafetensorsWriter(
            out,
            infos,
            metadata={"mergelab.expanded": json.dumps({"task": task, **tasks[task - 1]})},
            force=force,
            inputs=inputs,
        )
        try:
            for info in infos:
                writer.write(
                    info.name, 0, _expand_tensor(info, layout[info.name], average, factors, task)
                )
        except BaseException:
            writer.abort()
            raise
        writer.close()
    finally:
        average.close()
        factors.close()
    return Path(out)


def _expand_tensor(
    info: TensorInfo, entry: dict[str, Any], average: Checkpoint, factors: Checkpoint, task: int
) -> np.ndarray:
    name = info.name
    if entry["kind"] == "full":
        source = factors if task in entry["stored"] else average
        return source.read(name)
    dtype = np.dtype(np.float64) if info.dtype == "F64" else np.dtype(np.float32)
    try:
        us = _read(factors, name + US, dtype)
        vt = _read(factors, name + VT, dtype)
    except KeyError:
        raise MergeError(f"{factors.label}: factors of {name!r} are missing") from None
    m, k_cols = entry["matrix"]
    if us.shape[0] != m or vt.shape[1] != k_cols or us.shape[1] != vt.shape[0]:
        raise MergeError(f"{factors.label}: factors of {name!r} do not fit its shape")
    values = _read(average, name, dtype).reshape(m, k_cols)
    values += us @ vt
    return from_compute(values.reshape(-1), info.dtype)


def compressed_files(folder: str | Path) -> list[Path]:
    """Every file of a compressed folder (for callers that copy or check it)."""
    manifest = read_manifest(folder)
    return [Path(folder) / AVERAGE_FILE] + [Path(folder) / t["file"] for t in manifest["tasks"]]


__all__ = [
    "CompressOptions",
    "CompressSummary",
    "compress",
    "compressed_files",
    "expand",
    "read_manifest",
    "task_file",
]
