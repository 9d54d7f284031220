"""From image files to extractor features, streaming and in parallel.

Decoding runs in worker processes while the network runs in the main one.
At most a few images per worker are in flight at any time, so memory stays
bounded whatever the number of files, and results come back in input order.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .faces import ENLARGE, NO_FACE_SEEN, crop_box, find_faces
from .files import file_sha256
from .network import ExifExtractor
from .patches import (
    DecodeLimits,
    ImageReadError,
    Processing,
    apply_processing,
    grid_tiles,
    jpeg_decoder,
    load_image,
)
from .provenance import read_provenance
from .runtime import exact_cuda_math

#: Smallest conv batch. oneDNN picks other kernels for batches of 1 or 3 tiles,
#: whose float rounding differs; padding every chunk to at least this many tiles
#: makes a tile's result independent of ``batch_size`` and of its neighbours.
MIN_CHUNK = 8

#: Images decoded ahead per worker: enough to keep the network busy, few enough
#: to bound memory (a 12 MP image is 36 MB while decoded, its tiles far less).
PREFETCH_PER_WORKER = 2

#: ``prctl`` option (linux/prctl.h): signal to send this process when its parent dies.
PR_SET_PDEATHSIG = 1


@dataclass
class PreparedFace:
    """One face of an image, cut out without resampling and tiled on its own."""

    #: the detected face (x, y, w, h) and the enlarged crop (x0, y0, x1, y1), native pixels
    box: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]
    tiles: np.ndarray
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedImage:
    """One file after decoding: its tiles, or the reason it could not be read."""

    path: str
    tiles: np.ndarray | None = None
    #: face mode only (``TileSettings.faces``): every face found, most supported first
    faces: list[PreparedFace] | None = None
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    decode_ms: float = 0.0
    #: the decoded pixels, when asked for (``explain`` draws on them: no second decode)
    pixels: np.ndarray | None = None
    #: ``TileSettings.provenance``: what the file's metadata says
    provenance: dict[str, Any] | None = None


@dataclass(frozen=True)
class FaceSettings:
    """Face mode: find every face, crop it (box enlarged ``enlarge`` times, no
    resampling) and tile each crop alone; ``aligned`` inputs are one face each."""

    enlarge: float = ENLARGE
    aligned: bool = False


#: Most tiles an "all tiles" scan uses (attention over the tile set grows with its square:
#: a 250 MP image holds about 61,000 tiles of 64 px).
MAX_TILES = 20_000


@dataclass(frozen=True)
class TileSettings:
    """How tiles are taken from an image; fit and scan must use the same."""

    patch_size: int = 64
    max_tiles: int = 16  # MAX_TILES: every tile of the grid (--patches all)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    #: evaluation only: processing applied before tiling (see ``patches.CONDITIONS``);
    #: in face mode it is applied to each face crop, the unit that is judged
    processing: Processing | None = None
    faces: FaceSettings | None = None
    #: also read the file's metadata (``scan --provenance``), in the decoding worker so
    #: that ``--timeout`` bounds it too
    provenance: bool = False


def link_target(path: str | Path) -> str:
    """Where a symlink leads: its final target, or in a loop of links (where there is
    none) the target the link itself names."""
    final = os.path.realpath(path)
    if os.path.islink(final):  # realpath stops on a loop, at one of its links
        return f"{os.readlink(path)} (a loop of symlinks)"
    return final


def prepare_image(path: str | Path, settings: TileSettings,
                  keep_pixels: bool = False) -> PreparedImage:
    """Hash, decode and tile one file; never raises (errors go in the record).
    ``keep_pixels`` keeps the decoded pixels in the record (a scan's records cross
    process boundaries, so it keeps only the tiles)."""
    started = time.perf_counter()
    record = PreparedImage(path=str(path))
    try:
        identify(record)
        image = load_image(path, settings.limits)
        record.format, record.width, record.height = image.format, image.width, image.height
        record.notes = list(image.notes)
        pixels = image.pixels
        if keep_pixels:
            record.pixels = pixels
        if settings.faces is not None:
            record.faces = prepare_faces(pixels, settings.faces, settings, record.notes)
        if _processes(settings):
            pixels = apply_processing(pixels, settings.processing)
            record.notes.append(f"processed for evaluation: {settings.processing.describe()}")
        upscaled = min(pixels.shape[:2]) < settings.patch_size
        record.tiles = grid_tiles(pixels, settings.patch_size, settings.max_tiles, record.notes)
        if (settings.max_tiles < MAX_TILES and not upscaled
                and len(record.tiles) < settings.max_tiles):  # MAX_TILES: --patches all
            record.notes.append(f"only {len(record.tiles)} tiles (fewer than {settings.max_tiles})")
    except ImageReadError as error:
        record.error = str(error)
    except OSError as error:  # hashing failed: unreadable, vanished, permission
        record.error = f"cannot read file: {error.strerror or error}"
    except Exception as error:  # a bug in a decoder must not end a batch
        record.error = f"unexpected {type(error).__name__}: {error}"
    if os.path.islink(path):  # the record names the link; what was read is its target
        read = "" if record.error else ": that file was read"
        record.notes.insert(0, f"a symlink to {link_target(path)}{read}")
    if settings.provenance:
        record.provenance = read_provenance(path, settings.limits.max_decode_mb * 1_000_000)
    record.decode_ms = (time.perf_counter() - started) * 1000
    return record


def identify(record: PreparedImage) -> None:
    """The file's size, modification time and SHA-256 into ``record``: what a record
    keeps of any file that could be read, scored or not."""
    path = record.path
    if Path(path).exists() and not Path(path).is_file():
        raise ImageReadError("not a regular file (a folder, pipe or device)")
    stat = os.stat(path)  # before hashing: a file changed since is rescanned on resume
    record.size, record.mtime_ns = stat.st_size, stat.st_mtime_ns
    record.sha256 = file_sha256(path)


def _processes(settings: TileSettings) -> bool:
    return settings.processing is not None and settings.processing != Processing()


def prepare_faces(pixels: np.ndarray, faces: FaceSettings, settings: TileSettings,
                  image_notes: list[str]) -> list[PreparedFace]:
    """Every face of ``pixels``: its native crop (processed for evaluation if asked),
    tiled as a whole image would be. An ``aligned`` image in which the face finder
    sees no face gets a note in ``image_notes`` that caps its verdict."""
    prepared = []
    found = find_faces(pixels, aligned=faces.aligned)
    if faces.aligned and found[0].neighbors == 0:
        image_notes.append(f"{NO_FACE_SEEN} --aligned judged the whole image as one face crop, "
                           "but the face finder sees no face in it: a face detector's verdict "
                           "says nothing of an image that is not a face (verdict capped at "
                           "uncertain; leave --aligned out to look for faces)")
    for face in found:
        x0, y0, x1, y1 = crop_box(pixels.shape, face, faces.enlarge)
        crop, notes = pixels[y0:y1, x0:x1], []
        if _processes(settings):
            crop = apply_processing(crop, settings.processing)
        tiles = grid_tiles(crop, settings.patch_size, settings.max_tiles, notes)
        prepared.append(PreparedFace(face.box, (x0, y0, x1, y1), tiles, notes))
    return prepared


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when its parent dies, even by SIGKILL: an
    orphaned decoder would keep reading evidence and holding memory. No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: best effort only
        return
    if os.getppid() != parent:  # the parent died before prctl: the signal will never come
        os._exit(1)


def _worker_init(parent: int) -> None:
    """Decoding workers: one thread, die with the parent, and leave Ctrl-C to the
    parent, which stops the pool itself and writes what was scanned."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)


def prepare_stream(
    paths: Iterable[str | Path], settings: TileSettings, workers: int,
    timeout: float | None = None,
) -> Iterator[PreparedImage]:
    """Decode files in ``workers`` processes (0 = in this process), in input
    order, with a bounded number in flight.

    A file whose decoding takes over ``timeout`` seconds gets an error record: its
    worker is killed (a decoder stuck in C cannot be interrupted otherwise) and the
    files in flight go to fresh workers. Decoding in this process (``workers=0``)
    cannot be stopped, so ``timeout`` is not enforced there.
    """
    if workers <= 0:
        for path in paths:
            yield prepare_image(path, settings)
        return
    pool = DecodingPool(workers, settings)
    try:
        pending: deque[tuple[str | Path, Future]] = deque()
        for path in paths:
            pending.append((path, pool.submit(path)))
            if len(pending) >= workers * PREFETCH_PER_WORKER:
                yield pool.next_result(pending, timeout)
        while pending:
            yield pool.next_result(pending, timeout)
    finally:  # also on Ctrl-C or an abandoned stream: drop queued files, stop the workers
        pool.close()


class DecodingPool:
    """Decoding worker processes that can be killed and replaced, for a file that
    hangs them or a worker that dies (out of memory, a crash in a decoder)."""

    def __init__(self, workers: int, settings: TileSettings) -> None:
        self.workers = workers
        self.settings = settings
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        jpeg_decoder()  # forked workers inherit it instead of importing it on the clock
        context = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init,
                                   initargs=(os.getpid(),))

    def submit(self, path: str | Path) -> Future:
        return self.pool.submit(prepare_image, path, self.settings)

    def next_result(self, pending: deque[tuple[str | Path, Future]],
                    timeout: float | None) -> PreparedImage:
        """The first pending file's record. It has been running at least since the
        files before it finished, so it gets ``timeout`` seconds or more."""
        path, future = pending.popleft()
        record = PreparedImage(path=str(path))
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            record.error = f"over the --timeout of {timeout:g} s: decoding stopped"
            record.decode_ms = timeout * 1000
        except BrokenProcessPool:
            record.error = ("the decoding worker died (out of memory, or a crash in a "
                            "decoder) while this file was in flight")
        self.restart()
        for index, (other, _) in enumerate(pending):
            pending[index] = (other, self.submit(other))
        with contextlib.suppress(ImageReadError, OSError):  # it was read once already
            identify(record)  # the record keeps which file it was, for custody and --resume
        return record

    def restart(self) -> None:
        """Kill every worker (one is stuck) and start fresh ones."""
        # a running task cannot be cancelled: killing its process is the only way
        for process in list(self.pool._processes.values()):
            process.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self._start()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class FeatureExtractor:
    """An extractor of the pretext architecture in inference mode on one device: the
    EXIF-trained one (one-class detector, ``explain``) or the binary detector's own.

    Each image is a forward pass of its own tile set: the result then does not
    depend on which other images share a batch, so the same image always gets
    the same score. The last result is kept: the one-class detector and the
    pretext heads (``calibrate``, ``explain``) read the same feature of the same
    tile set, and the second reading then costs nothing.
    """

    def __init__(self, extractor: ExifExtractor, device: torch.device,
                 batch_size: int = 256) -> None:
        self.device = device
        self.batch_size = batch_size
        exact_cuda_math(device)
        self.model = extractor.to(device).eval()
        if device.type == "cpu":  # oneDNN convolutions run about 1.5x faster this way
            self.model = self.model.to(memory_format=torch.channels_last)
        #: the last tile set (the very object, which is kept alive) and its feature
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """Feature of one image from its (N, 3, P, P) uint8 tiles.

        Tiles go through the conv stack ``batch_size`` at a time (bounded memory
        for "all tiles" scans); the set transformer then sees all of them at once.
        Called again with the same array object, it returns the kept result.
        """
        if self._last is not None and self._last[0] is tiles:
            return self._last[1]
        feature = self.model.set_transformer(self._patch_vectors(tiles))[0].float().cpu().numpy()
        self._last = (tiles, feature)
        return feature

    @torch.inference_mode()
    def per_tile(self, tiles: np.ndarray) -> np.ndarray:
        """(N, D) features, each of one tile seen as a one-tile set: what a detector
        would say of that tile alone (``aigdetect explain``'s map). One conv pass for
        all tiles, then the set transformer on N sets of one."""
        vectors = self._patch_vectors(tiles)[0][:, None]  # (N, 1, D): N sets of one tile
        features = torch.cat([self.model.set_transformer(vectors[start : start + self.batch_size])
                              for start in range(0, len(vectors), self.batch_size)])
        return features.float().cpu().numpy()

    def _patch_vectors(self, tiles: np.ndarray) -> torch.Tensor:
        """(1, N, D) per-tile vectors of the conv stack, ``batch_size`` tiles at a time."""
        tensor = torch.from_numpy(tiles)
        vectors = []
        for start in range(0, len(tensor), self.batch_size):
            part = tensor[start : start + self.batch_size]
            count = len(part)
            if count < MIN_CHUNK:  # pad: tiny batches take other kernels, other roundings
                part = torch.cat([part, part.new_zeros((MIN_CHUNK - count, *part.shape[1:]))])
            part_vectors, _encoder_maps = self.model.patch_vectors(part.to(self.device)[None])
            vectors.append(part_vectors[:, :count])
        return torch.cat(vectors, dim=1)
