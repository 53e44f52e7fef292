"""The check pass and the decoded cache: every file of a folder dataset is decoded once, by worker processes, into
a memory-mapped ``.npy`` that later runs read without decoding anything (:mod:`.folder` decides which files).

Where: ``$XDG_CACHE_HOME/inceptionlab/images/`` (default ``~/.cache/...``), never inside the user's folder::

    index.json            {folder or CSV: the key it was last loaded with}: to say why a cache was rebuilt
    <key>/lock            held (flock) by the process that builds; others (torchrun ranks) wait, then read
    <key>/images.npy      uint8 rows x C x S x S, split by split (train, then val, then test), in sample order
    <key>/labels.npy      int64, one per row
    <key>/files.json      every planned file as [path, label, split, size, mtime_ns], to compare with a later plan
    <key>/manifest.json   written last and atomically: rows per split, channels, mean/std of the training split,
                          the content fingerprint, bad files, duplicates, the modes and sizes found

The key is SHA-256 (32 hex digits) of the format version, the decode settings (size, colour, resize, background),
the classes and every file's relative path, label, split, size and mtime_ns: an edited, added, removed or moved
file, or another setting, is another cache. A key folder without a manifest is an interrupted build: rebuilt.
Bad files are left out of the rows and listed in the manifest, so ``on_bad`` is not part of the key: the next run
with ``--on-bad skip`` reads the same cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from inceptionlab.data.dataset import channel_stats, content_fingerprint
from inceptionlab.data.images import BadImageError, DecodeNotes, decode_image
from inceptionlab.errors import DatasetError
from inceptionlab.fileio import atomic_write_json, atomic_write_with

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builds of one cache are not guarded there
    fcntl = None

FORMAT_VERSION = 1
# A worker pool costs ~2 s to start (its server imports torch through the package) and halves the rest of the pass
# on 2 workers: it pays when the rest would take longer than this in one process, timed on the first files.
POOL_PAYS_SECONDS = 4.0
PROBE_SECONDS = 0.3  # decoding the first files here, this long, to time them
SPLITS = ("train", "val", "test")
_COPY_ROWS = 1024  # rows per copy step when a map is widened or compacted (bounded memory)


def images_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/inceptionlab/images``: beside ``fashion_mnist.cache_dir()``, under the same base."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inceptionlab" / "images"


@dataclass(frozen=True)
class Settings:
    """How each file is decoded (:func:`~inceptionlab.data.images.decode_image`'s arguments)."""

    image_size: int
    color: str
    resize: str
    background: tuple[int, int, int]


@dataclass(frozen=True)
class Plan:
    """What to decode, in row order, and how: everything the cache key is made of."""

    where: Path  # the folder or CSV the user named: the index's key and the messages' name
    root: Path  # what the file paths are relative to
    files: list[tuple[str, int, str, int, int]]  # (path, label index, split, size, mtime_ns), split by split
    classes: tuple[str, ...]
    settings: Settings
    key: str


@dataclass
class Cached:
    directory: Path
    manifest: dict[str, Any]
    images: np.ndarray  # rows x C x S x S uint8, memory-mapped copy-on-write (writable, never written back)
    labels: np.ndarray  # int64
    hit: bool = True
    reason: str | None = None  # why it was built (None: the first build for this folder, or a hit)


def make_plan(where, root, rows: list[tuple[str, int, str]], classes, settings: Settings) -> Plan:
    """The plan for ``rows`` of (path relative to ``root``, label index, split), with every file's size and mtime."""
    files = [(rel, label, split, *_stat(os.path.join(root, rel))) for rel, label, split in rows]  # no Path: 60,000
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, list(classes), dataclasses.asdict(settings)]).encode())
    for rel, label, split, size, mtime in files:
        digest.update(f"\n{rel}\0{label}\0{split}\0{size}\0{mtime}".encode())
    return Plan(Path(where), Path(root), files, tuple(classes), settings, digest.hexdigest()[:32])


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1  # gone or unreadable: the check pass reports it as a bad file
    return st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------------------------------------------------
# Opening, locking, explaining


def load_or_build(plan: Plan, *, workers: int = 1, progress: bool = False, log=print) -> Cached:
    """The cache of ``plan``: read if complete, else built (by one process at a time) and then read."""
    directory = images_cache_dir() / plan.key
    cached = _open(directory, plan)
    if cached is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(directory, exc) from None
        with _locked(directory / "lock", log):
            cached = _open(directory, plan)  # built by another process (a torchrun rank) while this one waited
            if cached is None:
                reason, stale = _why_rebuilt(plan, directory)
                _build(plan, directory, workers, progress, log, reason)
                cached = _open(directory, plan)
                if cached is None:
                    raise DatasetError(f"the image cache {directory} could not be read back: delete it and retry")
                cached.hit, cached.reason = False, reason
                _remember(plan)
                if stale is not None:
                    _drop(stale)
    manifest = cached.manifest
    if cached.hit:
        log(f"images: {manifest['rows']:,} decoded images from the cache {directory}")
    else:
        processes = f"{manifest['workers']} process{'es' if manifest['workers'] > 1 else ''}"
        log(f"images: checked {len(plan.files):,} files in {manifest['seconds']:.1f} s "
            f"({len(plan.files) / max(manifest['seconds'], 1e-9):,.0f} files/s, {processes}), "
            f"{len(manifest['bad']):,} bad")
    return cached


def _open(directory: Path, plan: Plan) -> Cached | None:
    """The complete cache in ``directory``, memory-mapped; None when it is absent, unfinished or damaged."""
    manifest = _read_json(directory / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("key") != plan.key:
        return None
    try:
        rows, size = manifest["rows"], plan.settings.image_size
        images = np.load(directory / "images.npy", mmap_mode="c" if rows else None, allow_pickle=False)
        labels = np.load(directory / "labels.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images.dtype != np.uint8 or images.shape != (rows, manifest["channels"], size, size) or \
            labels.dtype != np.int64 or labels.shape != (rows,):
        return None
    return Cached(directory, manifest, images, labels)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unwritable(path: Path, exc: OSError) -> DatasetError:
    return DatasetError(f"cannot write the image cache {path} ({exc.strerror or exc}): free some space there or "
                        "set XDG_CACHE_HOME to a writable directory with room")


@contextlib.contextmanager
def _locked(path: Path, log):
    """Hold an exclusive flock on ``path``: one process builds, the others block here and then find the manifest."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"images: waiting for another process building the cache {path.parent}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _why_rebuilt(plan: Plan, directory: Path) -> tuple[str | None, Path | None]:
    """Why there is no usable cache (an interrupted build, or what changed since this folder's last cache), and
    that last cache when no later load can use it again."""
    if any(p.name != "lock" for p in directory.iterdir()):
        return "an earlier build of this cache was interrupted or damaged", None
    index = _read_json(images_cache_dir() / "index.json")
    previous = index.get(str(plan.where)) if isinstance(index, dict) else None
    if not isinstance(previous, str) or previous == plan.key:
        return None, None
    old = images_cache_dir() / previous
    manifest, files = _read_json(old / "manifest.json"), _read_json(old / "files.json")
    if not isinstance(manifest, dict) or not isinstance(files, list):
        return "the files or settings changed since the last cache, which is gone", None
    reasons, gone = _differences(plan, manifest, files)
    return "; ".join(reasons) or "the files or settings changed since the cache was built", old if gone else None


def _differences(plan: Plan, manifest: dict, files: list) -> tuple[list[str], bool]:
    """What changed, in words, and whether a file of the old cache was edited or removed since (then no load can
    use it again; after an addition, a load pinned to an earlier split file still can)."""
    reasons = []
    settings, old_settings = json.loads(json.dumps(dataclasses.asdict(plan.settings))), manifest.get("settings", {})
    changed = [f"{k} {old_settings.get(k)} -> {v}" for k, v in settings.items() if old_settings.get(k) != v]
    if changed:
        reasons.append(f"the settings changed ({', '.join(changed)})")
    if manifest.get("classes") != list(plan.classes):
        reasons.append("the classes changed")
    old = {row[0]: row[1:] for row in files if isinstance(row, list) and len(row) == 5}
    new = {rel: (label, split, size, mtime) for rel, label, split, size, mtime in plan.files}
    counts = {"edited": sum(rel in old and tuple(old[rel][2:]) != new[rel][2:] for rel in new),
              "added": len(new.keys() - old.keys()), "removed": len(old.keys() - new.keys())}
    if sum(counts.values()):
        detail = ", ".join(f"{n:,} {what}" for what, n in counts.items() if n)
        reasons.append(f"{plural(sum(counts.values()), 'file')} changed since the cache was built ({detail})")
    moved = sum(rel in old and tuple(old[rel][:2]) != new[rel][:2] for rel in new)
    if moved and manifest.get("classes") == list(plan.classes):  # new classes renumber every label: said above
        reasons.append(f"{plural(moved, 'file')} moved to another label or split")
    return reasons, counts["edited"] + counts["removed"] > 0


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _drop(old: Path) -> None:
    """Delete a cache no load can use any more, unless a process holds its lock (it is being built)."""
    if fcntl is None:
        return  # no lock to check, and Windows cannot delete a mapped file anyway
    with contextlib.suppress(OSError), open(old / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError) when it is in use
        for path in old.iterdir():
            if path.name != "lock":
                path.unlink()  # a process reading it keeps its map: unlinking only frees the name
        (old / "lock").unlink()
        old.rmdir()


def _remember(plan: Plan) -> None:
    """Record ``plan.key`` as the folder's latest cache (for the next rebuild's reason); failures only cost that."""
    root = images_cache_dir()
    with contextlib.suppress(OSError), _locked(root / "index.lock", lambda _: None):
        index = _read_json(root / "index.json")
        index = index if isinstance(index, dict) else {}
        index[str(plan.where)] = plan.key
        atomic_write_json(root / "index.json", index)


# ---------------------------------------------------------------------------------------------------------
# Building


def _build(plan: Plan, directory: Path, workers: int, progress: bool, log, reason: str | None) -> None:
    """Decode every file of ``plan`` into ``directory``; the manifest goes last (the cache is complete only then)."""
    for leftover in directory.iterdir():
        if leftover.name != "lock":
            leftover.unlink()  # an interrupted build's files: this process holds the lock
    log(f"images: {'rebuilding' if reason else 'decoding'} {len(plan.files):,} files of {plan.where} into the cache "
        f"{directory}{': ' + reason if reason else ''}")
    started = time.perf_counter()
    try:
        rows = _Rows(directory / ".images.npy.building", len(plan.files), plan.settings)
        notes, digests, workers = _check_pass(plan, rows, workers, progress)
        keep = [i for i, note in enumerate(notes) if not isinstance(note, str)]
        rows.finish(directory / "images.npy", keep)
        labels = np.array([plan.files[i][1] for i in keep], dtype=np.int64)
        atomic_write_with(directory / "labels.npy", lambda f: np.save(f, labels, allow_pickle=False))
        atomic_write_json(directory / "files.json", [list(f) for f in plan.files])
        manifest = {"format": FORMAT_VERSION, "key": plan.key, "where": str(plan.where),
                    "classes": list(plan.classes), "settings": dataclasses.asdict(plan.settings),
                    **_summary(plan, notes, digests, keep)}
        manifest.update(_statistics(directory / "images.npy", labels, manifest["splits"], plan.classes))
        manifest.update(seconds=round(time.perf_counter() - started, 3), workers=workers)
        atomic_write_json(directory / "manifest.json", manifest)  # last: only now does the cache look complete
    except OSError as exc:  # a full disk while writing the rows (reserved up front, so never a SIGBUS)
        raise _unwritable(directory, exc) from None


def _decode_chunk(task: tuple[list[tuple[int, str]], Settings]) -> list[tuple[int, np.ndarray | None, Any, str]]:
    """Decode files in a worker: ``(row, array or None, DecodeNotes or the reason it is bad, blake2b of the bytes)``."""
    jobs, settings = task
    results = []
    for row, path in jobs:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            results.append((row, None, f"cannot read it: {exc.strerror or exc}", ""))
            continue
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        try:
            array, notes = decode_image(data, settings.image_size, color=settings.color,
                                        resize=settings.resize, background=settings.background, draft=True)
        except BadImageError as exc:
            results.append((row, None, str(exc), digest))
            continue
        results.append((row, array, notes, digest))
    return results


@contextlib.contextmanager
def _mapper(workers: int):
    """``imap(fn, tasks)``: here for one worker, else a process pool started by forkserver (or spawn): torch is
    loaded in this process, and forking it is unsafe."""
    if workers <= 1:
        yield map
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])  # imported once by the server, not by every worker
    with context.Pool(workers) as pool:
        yield pool.imap_unordered


def _check_pass(plan: Plan, rows: _Rows, workers: int, progress: bool) -> tuple[list, list[str], int]:
    """Decode every file once (a bar when ``progress``), the rows written here: the first files in this process,
    timed, the rest on ``workers`` processes when that pays. The notes (or bad reasons), digests, processes used."""
    from tqdm import tqdm

    jobs = [(i, str(plan.root / f[0])) for i, f in enumerate(plan.files)]
    step = max(1, min(32, len(jobs) // (workers * 4)))  # small tasks keep both workers busy to the end
    tasks = iter([(jobs[a : a + step], plan.settings) for a in range(0, len(jobs), step)])
    notes: list = [None] * len(jobs)
    digests = [""] * len(jobs)
    with tqdm(total=len(jobs), desc="checking images", unit="img", disable=not progress, leave=False) as bar:
        started, done = time.perf_counter(), 0
        for task in tasks:
            done += _store(_decode_chunk(task), rows, notes, digests, bar)
            if time.perf_counter() - started > PROBE_SECONDS:
                break
        rest = (len(jobs) - done) * (time.perf_counter() - started) / max(done, 1)
        used = workers if workers > 1 and rest > POOL_PAYS_SECONDS else 1
        with _mapper(used) as imap:
            for results in imap(_decode_chunk, tasks):  # what the probe left
                _store(results, rows, notes, digests, bar)
    return notes, digests, used


def _store(results: list, rows: _Rows, notes: list, digests: list[str], bar) -> int:
    for row, array, note, digest in results:
        if array is not None:
            rows.put(row, array)
        notes[row], digests[row] = note, digest
    bar.update(len(results))
    return len(results)


class _Rows:
    """The decoded rows, in plan order, in a ``.npy`` memory map. With ``color="auto"`` it starts with 1 channel and
    widens to 3 at the first colour image (grey rows replicated, exactly as decode_image replicates grey)."""

    def __init__(self, path: Path, n: int, settings: Settings):
        self.path, self.n, self.size = path, n, settings.image_size
        self.map = _new_map(path, (n, 3 if settings.color == "rgb" else 1, self.size, self.size))

    def put(self, row: int, array: np.ndarray) -> None:
        if array.shape[0] > self.map.shape[1]:
            self._widen()
        self.map[row] = array  # a 1-channel array fills 3 channels by broadcasting

    def _widen(self) -> None:
        path = self.path.with_name(self.path.name + ".rgb")
        wide = _new_map(path, (self.n, 3, self.size, self.size))
        for start in range(0, self.n, _COPY_ROWS):
            wide[start : start + _COPY_ROWS] = self.map[start : start + _COPY_ROWS]
        os.replace(path, self.path)
        self.map = wide

    def finish(self, final: Path, keep: list[int]) -> None:
        """Move the rows to ``final``: renamed when every file was good, else copied without the bad ones."""
        self.map.flush()
        if len(keep) == self.n:
            os.replace(self.path, final)
            return
        shape = (len(keep), self.map.shape[1], self.size, self.size)
        if not keep:
            np.save(final, np.zeros(shape, np.uint8), allow_pickle=False)  # nothing to map: numpy cannot map 0 bytes
        else:
            out = _new_map(final.with_name(".images.npy.compact"), shape)
            for start in range(0, len(keep), _COPY_ROWS):
                out[start : start + _COPY_ROWS] = self.map[keep[start : start + _COPY_ROWS]]
            out.flush()
            os.replace(final.with_name(".images.npy.compact"), final)
        self.path.unlink()


def _new_map(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` memory map, its disk space reserved: a full disk is an OSError now, not a SIGBUS mid-pass."""
    array = open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array


def _summary(plan: Plan, notes: list, digests: list[str], keep: list[int]) -> dict[str, Any]:
    """What the pass found: rows per split, bad files, duplicates, the modes, sizes, animated and grey counts."""
    good: list[DecodeNotes] = [notes[i] for i in keep]
    splits = Counter(plan.files[i][2] for i in keep)
    conflicts, duplicates = _duplicates(plan, digests, keep)
    return {
        "rows": len(keep), "splits": {split: splits[split] for split in SPLITS},
        "bad": [[plan.files[i][0], note] for i, note in enumerate(notes) if isinstance(note, str)],
        "conflicts": conflicts, "duplicates": duplicates,
        "modes": dict(Counter(n.mode for n in good).most_common()),
        "width": [min((n.width for n in good), default=0), max((n.width for n in good), default=0)],
        "height": [min((n.height for n in good), default=0), max((n.height for n in good), default=0)],
        "animated": sum(n.frames > 1 for n in good), "grey": sum(bool(n.grey) for n in good),
    }


def _duplicates(plan: Plan, digests: list[str], keep: list[int]) -> tuple[list, list]:
    """Files with identical bytes: pairs with two labels (``[[path, label], [path, label]]``, one per group), and
    groups spanning two or more splits (``[[split, path], ...]``)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i in keep:
        groups[digests[i]].append(i)
    conflicts, across = [], []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        first = plan.files[rows[0]]
        other = next((plan.files[i] for i in rows if plan.files[i][1] != first[1]), None)
        if other is not None:
            conflicts.append([[first[0], first[1]], [other[0], other[1]]])
        if len({plan.files[i][2] for i in rows}) > 1:
            across.append([[plan.files[i][2], plan.files[i][0]] for i in rows])
    return conflicts, across


def _statistics(images_path: Path, labels: np.ndarray, splits: dict[str, int], classes) -> dict[str, Any]:
    """Per-channel mean/std of the training rows and the content fingerprint, read once from the map."""
    images = np.load(images_path, mmap_mode="c" if len(labels) else None, allow_pickle=False)
    bounds, start = {}, 0
    for split in SPLITS:
        bounds[split], start = (start, start + splits[split]), start + splits[split]
    part = {split: (torch.from_numpy(images[a:b]), torch.from_numpy(labels[a:b])) for split, (a, b) in bounds.items()}
    mean, std = channel_stats(part["train"][0])
    # the IDX loader's order (train, test), then val when there is one: a folder export of it fingerprints alike
    tensors = [*part["train"], *part["test"], *(part["val"] if splits["val"] else ())]
    return {"channels": images.shape[1], "color": "grey" if images.shape[1] == 1 else "rgb",
            "mean": list(mean), "std": list(std), "fingerprint": content_fingerprint(*tensors, *classes)}
