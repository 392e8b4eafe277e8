"""Packed training data on disk: the ``.zsgd`` file (``zipsgd pack``).

Quantizing and packing happen once, on a workstation, into a file the board streams from
without holding it in memory: ``zipsgd train FILE.zsgd`` and the estimators (``fit`` on a
:class:`PackedData`) memory-map the packed copies, and the driver streams them through a
ring of DMA buffers (host and board memory stay bounded by the ring whatever the data's
size); the CPU reference reads them in chunks.

Format (version 1, little-endian)
---------------------------------
========= ======= ===================================================================
offset    size    content
========= ======= ===================================================================
0         8       magic ``b"ZSGDPACK"``
8         4       format version (uint32, 1)
12        4       header length ``H`` in bytes (uint32)
16        H       header: UTF-8 JSON object (keys below)
data      ...     ``copies`` packed copies, each ``words_per_copy`` uint64 words (the
                  stream of :mod:`zipsgd.packing`, samples in the copy's order); ``data``
                  = the header's ``data_offset``, a multiple of 4096 (memory-mappable)
========= ======= ===================================================================

Header keys: ``contract_version`` (the packer's; a file of another major version, whose
stream layout may differ, is refused),
``word_bits``, ``encoding``, ``bits``, ``dim``, ``n_samples``, ``copies``,
``words_per_copy``, ``data_offset``, ``codebook`` (FEAT integers, or null for 32-bit),
how it was quantized (``sampling``, ``levels``, ``seed``, ``scale``, ``fit_intercept``,
``loss``), ``data_stats`` (what ``step="auto"`` reads: the largest per-sample curvature
and the mean curvature of the quantized data), and what maps a model back to the user's units (``scaler``: its class, mode,
``center``/``half`` per feature; ``y_center``, ``y_scale``, ``classes``, ``n_features``).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import contract as c

MAGIC = b"ZSGDPACK"
FORMAT_VERSION = 1
ALIGN = 4096
SUFFIX = ".zsgd"


class PackFileError(ValueError):
    """A file that is not a packed zipsgd file this library can read."""


def _scaler_state(scaler) -> dict:
    return {"class": type(scaler).__name__, "mode": scaler.mode, "center": scaler.center_.tolist(),
            "half": scaler.half_.tolist()}


def _scaler_from(state: dict):
    from . import quant
    from .job import MaxAbsScaler

    cls = {"Scaler": quant.Scaler, "MaxAbsScaler": MaxAbsScaler}[state["class"]]
    scaler = cls(mode=state["mode"])
    scaler.center_ = np.asarray(state["center"], dtype=np.float64)
    scaler.half_ = np.asarray(state["half"], dtype=np.float64)
    scaler.n_features_in_ = scaler.center_.size
    return scaler


def write(path, X, y, *, loss: str = "squared", bits: int = 8, sampling: str = "double",
          levels: str = "uniform", copies: int = 4, seed: int | None = 0, word_bits: int = c.WORD_BITS_DEFAULT,
          scale: str = "feature", fit_intercept: bool = True, chunk_rows: int | None = None,
          params: c.EngineParams | None = None) -> "PackedData":
    """Quantize and pack ``X``, ``y`` into the ``.zsgd`` file ``path``, in chunks of rows.

    ``X`` may be memory-mapped (e.g. ``np.load(..., mmap_mode="r")``): it is read chunk by
    chunk, and the packed copies go straight to the file, so memory stays bounded by a
    chunk whatever the data's size. The file is written to a temporary name beside
    ``path`` and renamed when complete: a failed or interrupted pack leaves nothing.
    """
    from .job import prepare_job

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"a packed file's name ends in {SUFFIX}: {path}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to write {path.name} in")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    mm = None

    def sink(k, words):
        nonlocal mm
        if mm is None:
            mm = np.memmap(tmp, dtype="<u8", mode="r+", offset=data_offset, shape=(copies, words))
        return mm[k]

    try:
        from .job import BITS_CHOICES
        if sampling not in c.SAMPLINGS or bits not in BITS_CHOICES:
            raise ValueError(f"unsupported sampling={sampling!r} or bits={bits!r}: choose one of {c.SAMPLINGS} "
                             f"and one of {BITS_CHOICES}")
        dim = np.shape(X)[1] + int(bool(fit_intercept))
        layout = c.Layout(word_bits, c.encoding_for(sampling, bits), bits, dim)
        words = len(y) * layout.beats_per_sample * layout.host_words_per_beat
        header_room = 64 * 1024 + 64 * (dim + 2 ** min(bits, 8))
        data_offset = -(-(16 + header_room) // ALIGN) * ALIGN
        with open(tmp, "wb") as f:
            f.truncate(data_offset + copies * words * 8)
        job = prepare_job(X, y, loss=loss, bits=bits, sampling=sampling, levels=levels, epochs=1, copies=copies,
                          seed=seed, word_bits=word_bits, scale=scale, fit_intercept=fit_intercept, params=params,
                          sink=sink, chunk_rows=chunk_rows)
        if mm is not None:
            mm.flush()
            del mm
        header = {
            "contract_version": list(c.CONTRACT_VERSION), "word_bits": word_bits,
            "encoding": c.Encoding(job.config.encoding).name, "bits": job.bits, "dim": job.dim,
            "n_samples": job.n_samples, "copies": job.copies, "words_per_copy": words, "data_offset": data_offset,
            "codebook": None if job.codebook is None else [int(v) for v in job.codebook],
            "sampling": job.sampling, "levels": job.levels, "seed": job.seed, "scale": job.scale,
            "fit_intercept": job.fit_intercept, "loss": job.loss, "scaler": _scaler_state(job.scaler),
            "y_center": job.y_center, "y_scale": job.y_scale, "n_features": job.n_features,
            "classes": None if job.classes is None else np.asarray(job.classes).tolist(),
            "data_stats": job.extras["data_stats"],
        }
        text = json.dumps(header).encode()
        if 16 + len(text) > data_offset:          # pragma: no cover - header_room is generous
            raise RuntimeError("packed-file header larger than its room")
        with open(tmp, "r+b") as f:
            f.write(MAGIC + struct.pack("<II", FORMAT_VERSION, len(text)) + text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        mm = None
        tmp.unlink(missing_ok=True)
        raise
    return open_packed(path)


@dataclass
class PackedData:
    """A ``.zsgd`` file, opened: its header and its copies, memory-mapped (read-only).

    Pass it to ``SGDRegressor.fit``/``SGDClassifier.fit`` in place of ``X`` (``y`` is in the
    file) or to :func:`zipsgd.job.job_from_packed`.
    """

    path: Path
    header: dict
    streams: list

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.streams)

    @property
    def n_samples(self) -> int:
        return self.header["n_samples"]

    @property
    def n_features(self) -> int:
        return self.header["n_features"]

    @property
    def classes(self):
        cls = self.header["classes"]
        return None if cls is None else np.asarray(cls)

    def scaler(self):
        return _scaler_from(self.header["scaler"])


def open_packed(path) -> PackedData:
    """Open a ``.zsgd`` file (see the module docstring); a one-line error for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                raise PackFileError(f"{path} is not a packed zipsgd file (no {MAGIC.decode()} magic)")
            version, size = struct.unpack("<II", head[8:])
            if version != FORMAT_VERSION:
                raise PackFileError(f"{path} is packed-file format {version}; this zipsgd reads {FORMAT_VERSION}")
            header = json.loads(f.read(size).decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackFileError(f"{path} could not be read as a packed zipsgd file: {exc}") from None
    version = tuple(header.get("contract_version", ()))
    if version[:1] != c.CONTRACT_VERSION[:1]:         # the stream layout changes only with the major version
        raise PackFileError(f"{path} was packed for contract {list(version)}, this zipsgd speaks "
                            f"{list(c.CONTRACT_VERSION)}: pack it again with this version")
    copies, words, offset = header["copies"], header["words_per_copy"], header["data_offset"]
    if path.stat().st_size < offset + copies * words * 8:
        raise PackFileError(f"{path} is truncated: {path.stat().st_size} bytes, its header needs "
                            f"{offset + copies * words * 8}")
    data = np.memmap(path, dtype="<u8", mode="r", offset=offset, shape=(copies, words))
    return PackedData(path=path, header=header, streams=[data[k] for k in range(copies)])
