"""Your own images: a folder of class folders, a folder of split folders, or a CSV, as one :class:`ImageDataset`.

This module *finds* the samples (which files, which classes, which split); :mod:`.cache` decodes each file once,
in a check pass, into a memory-mapped cache; :mod:`.images` decodes one file (the function ``predict`` shares).

``path`` is one of
  a) a folder of class folders, ``PATH/CLASS/...``;
  b) a folder of split folders, ``PATH/{train, val|valid|validation, test}/CLASS/...`` (names case-insensitive);
  c) a CSV file with the columns ``path,label[,split]`` (a header row; paths relative to the CSV's folder; split
     values train, val, valid, validation or test; other columns ignored).

Classes are the immediate sub-folders (of every split folder: one label set across all splits, so a split that
lacks a class keeps every index) or the CSV's labels, in natural order ("1, 2, 10"; case-insensitive, ties broken
by the exact name); ``classes_file`` (one name per line) pins the order and refuses labels it does not list.
Folders named ``.*``, ``__MACOSX`` or ``__pycache__`` are skipped at every level and reported; inside a class
folder, files are found recursively and non-image files (``.DS_Store``, ``Thumbs.db``, ``._x.jpg``, ``.txt``...)
are ignored and counted.

**Sample order.** Within a split (train, then val, then test), samples are ordered by the natural order of their
path relative to their class folder (for a CSV: the path as listed, relative to the CSV's folder), then by class
index. Files named by their index in another dataset (``train/3/00017.png``) therefore come back in that
dataset's order, whatever the file system's listing order.

**Split.** Split folders or a split column are used as they are. A split they lack (all of them, for layout a or a
CSV without a split column) is taken from the training files, per class (stratified): the class's files are ranked
by a seeded hash of their relative path (``split_seed``, 0 by default, so every model and training seed sees the
same split, and adding a file moves few others), the first ``round(n * test_fraction)`` go to test and the next
``round(n * val_fraction)`` to val (rounded half up; at least 1 each when the class has 3 or more files and the
fraction is above 0; at least 1 file always stays in train). ``val_fraction=0`` means no validation split.
``split_file`` (a ``split.csv`` an earlier run wrote, :func:`write_split_csv`) pins exactly those files to those
splits: a listed file that is gone is an error, files it does not list are left out (counted in the report).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import posixpath
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from inceptionlab.data import cache
from inceptionlab.data.dataset import DataInfo, ImageDataset, class_counts
from inceptionlab.data.images import COLOR_MODES, RESIZE_MODES, is_image_file
from inceptionlab.errors import ConfigError, DatasetError
from inceptionlab.fileio import atomic_write_text

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SKIPPED_FOLDERS = frozenset({"__MACOSX", "__pycache__"})
ON_BAD = ("error", "skip")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key: runs of digits compare as numbers ("2" < "10"), the rest case-insensitively; ties are broken by the
    case-insensitive, then the exact name, so an order never depends on the file system's listing order."""
    folded = name.casefold()
    parts = _DIGITS.split(folded)  # text, digits, text, ...: equal positions hold equal types
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts), folded, name


def path_key(rel: str) -> tuple:
    """:func:`natural_key` of each component of a '/'-separated path ("a/2.png" < "a/10.png" < "a2/1.png")."""
    return tuple(map(natural_key, rel.split("/")))


def is_skipped_folder(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS


class Sample(NamedTuple):  # a tuple, not a dataclass: 60,000 of them are made and sorted at every start
    rel: str  # the file relative to the root ('/'-separated): what split.csv and the cache key name it by
    label: str
    split: str | None  # "train", "val" or "test"; None until the seeded split assigns it
    within: str  # the path relative to its class folder (a CSV's path as listed): the order key


@dataclass
class Found:
    """What :func:`find_samples` found: the samples in the documented order, their classes and what was left out."""

    where: Path  # what the user named: the folder or the CSV file
    root: Path  # what sample paths are relative to: the folder, or the CSV's folder
    layout: str  # "classes", "splits" or "csv"
    samples: list[Sample]
    classes: tuple[str, ...]
    split_how: str  # how the splits were decided, for the report
    skipped: list[str] = field(default_factory=list)  # folders left out, relative to the root
    ignored: list[str] = field(default_factory=list)  # non-image files, relative to the root
    unlisted: int = 0  # files present but not in the split file (left out)

    @property
    def source(self) -> str:
        return "csv" if self.layout == "csv" else "folder"


def _label(name: str) -> str:
    """A class name as written by any system (macOS writes é decomposed): NFC, so names compare equal."""
    return unicodedata.normalize("NFC", name.strip())


# ---------------------------------------------------------------------------------------------------------
# Finding files in a folder


def _listing(root: Path, rel_dir: str, found: Found) -> list[str]:
    """The sub-folders of ``root/rel_dir`` that count, in natural order; its files and skipped folders reported."""
    folder = root / rel_dir if rel_dir else root
    try:
        entries = sorted(os.scandir(folder), key=lambda e: natural_key(e.name))
    except OSError as exc:
        raise DatasetError(f"cannot list {folder} ({exc.strerror or exc}): make it readable for you") from None
    names = []
    for entry in entries:
        rel = posixpath.join(rel_dir, entry.name)
        if not entry.is_dir():
            found.ignored.append(rel)  # a file beside the class folders belongs to no class
        elif is_skipped_folder(entry.name):
            found.skipped.append(rel)
        else:
            names.append(entry.name)
    return names


def _class_files(root: Path, rel_class: str, label: str, split: str | None, found: Found) -> list[Sample]:
    """Every image file under the class folder ``root/rel_class`` (recursively, links followed once), as samples."""
    samples, ignored, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root / rel_class, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in list(dirnames):
            if is_skipped_folder(name) or os.path.realpath(os.path.join(dirpath, name)) in seen:
                dirnames.remove(name)  # os.walk descends only into what is left (a link loop is walked once)
                found.skipped.append(posixpath.join(rel_dir, name))
        for name in filenames:
            rel = posixpath.join(rel_dir, name)
            if is_image_file(name):
                samples.append(Sample(rel, label, split, rel[len(rel_class) + 1:]))
            else:
                ignored.append(rel)
    found.ignored += ignored
    if not samples:
        other = f" ({cache.plural(len(ignored), 'other file')}, e.g. {ignored[0]})" if ignored else ""
        raise DatasetError(f"class folder {root / rel_class} has no images{other}: add images or remove the folder")
    return samples


def _split_folders(root: Path, names: list[str]) -> dict[str, str] | None:
    """``{split: folder name}`` for layout b (a ``train`` folder is there), None for a folder of class folders."""
    splits = {name: SPLIT_NAMES.get(name.casefold()) for name in names}
    if "train" not in splits.values():
        if names and all(splits.values()):
            raise DatasetError(f"{root} has {', '.join(names)} but no train folder: add {root}/train/CLASS/...")
        return None
    classes = [name for name, split in splits.items() if split is None]
    if classes:
        raise DatasetError(f"{root} mixes split folders ({', '.join(n for n in names if splits[n])}) with other "
                           f"folders ({', '.join(classes[:3])}): move every class folder into train/, val/ or test/")
    chosen: dict[str, str] = {}
    for name, split in splits.items():
        if split in chosen:
            raise DatasetError(f"{root} has two {split} folders, {chosen[split]} and {name}: merge them into one")
        chosen[split] = name
    return chosen


def _find_in_folder(where: Path) -> tuple[Found, set[str]]:
    found = Found(where, where, "classes", [], (), "")
    names = _listing(where, "", found)
    splits = _split_folders(where, names)
    if splits is None:
        _check_class_count(where, [_label(n) for n in names])
        for name in names:
            found.samples += _class_files(where, name, _label(name), None, found)
        return found, set()
    found.layout = "splits"
    for split, folder in splits.items():
        for name in _listing(where, folder, found):
            found.samples += _class_files(where, f"{folder}/{name}", _label(name), split, found)
    _check_class_count(where, [s.label for s in found.samples])
    return found, {s.split for s in found.samples}  # an empty split folder counts as absent


def _check_class_count(where: Path, labels: list[str], csv_file: bool = False) -> None:
    names = sorted(set(labels), key=natural_key)
    if not names:
        raise DatasetError(f"{where} lists no images: add lines path,label" if csv_file else
                           f"{where} has no class folders: put each class's images in a sub-folder, {where}/CLASS/")
    if len(names) == 1:
        raise DatasetError(f"{where} has one class ({names[0]}): a classifier needs two or more "
                           f"{'labels' if csv_file else 'class folders'}")


# ---------------------------------------------------------------------------------------------------------
# A CSV, a classes file, a split file


def _read_table(path: Path, required: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str]]]:
    """``(line number, {column: value})`` rows of a CSV with a header naming ``required`` (case-insensitive)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark from a spreadsheet is no column name
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {what} {path} ({getattr(exc, 'strerror', None) or exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = [name.strip().casefold() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise DatasetError(f"{what} {path} lacks the column(s) {', '.join(missing)}: its first line must name "
                           f"{','.join(required)}")
    pad = [""] * len(header)  # a short row has every column, empty; extra values are dropped
    return [(reader.line_num, dict(zip(header, [v.strip() for v in row] + pad, strict=False)))
            for row in reader if row]


def _csv_split(value: str | None, path: Path, line: int) -> str:
    split = SPLIT_NAMES.get((value or "").casefold())
    if split is None:
        raise DatasetError(f"{path} line {line}: split {value or ''!r} is none of train, val, valid, validation, test")
    return split


def _clean_rel(value: str) -> str:
    return posixpath.normpath(value.replace("\\", "/"))  # a CSV written on Windows; "./a.png" is "a.png"


def _find_in_csv(where: Path) -> tuple[Found, set[str]]:
    rows = _read_table(where, ("path", "label"), "CSV file")
    with_split = bool(rows) and "split" in rows[0][1]
    found = Found(where, where.parent, "csv", [], (), "")
    lines: dict[str, int] = {}
    for line, row in rows:
        rel, label = _clean_rel(row.get("path") or ""), _label(row.get("label") or "")
        if rel == "." or not label:
            raise DatasetError(f"{where} line {line}: an empty path or label: fill it in or delete the line")
        if rel in lines:
            raise DatasetError(f"{where} lists {rel} twice (lines {lines[rel]} and {line}): keep one line")
        lines[rel] = line
        split = _csv_split(row.get("split"), where, line) if with_split else None
        found.samples.append(Sample(rel, label, split, rel))
    missing = [s.rel for s in found.samples if not (found.root / s.rel).is_file()]
    if missing:
        raise DatasetError(f"{where} lists {len(missing)} file(s) that do not exist, e.g. line {lines[missing[0]]}: "
                           f"{missing[0]}; paths are relative to {found.root}: fix them or remove the lines")
    _check_class_count(where, [s.label for s in found.samples], csv_file=True)
    return found, {s.split for s in found.samples} - {None}


def read_classes_file(path: str | os.PathLike) -> tuple[str, ...]:
    """The class names of ``path``, one per line in index order (blank lines ignored)."""
    path = Path(path)
    try:
        names = [_label(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the classes file {path} ({getattr(exc, 'strerror', None) or exc})") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"classes file {path} names {repeated[0]} twice: keep one line per class")
    if len(names) < 2:
        raise DatasetError(f"classes file {path} names {len(names)} class(es): a classifier needs two or more")
    return tuple(names)


def _gather_classes(found: Found, classes_file) -> tuple[str, ...]:
    """One label set over every split: natural order, or the classes file's order (which must list every label)."""
    labels = {s.label for s in found.samples}
    if classes_file is None:
        return tuple(sorted(labels, key=natural_key))
    pinned = read_classes_file(classes_file)
    unknown = sorted(labels - set(pinned), key=natural_key)
    if unknown:
        raise DatasetError(f"class {unknown[0]} of {found.where} is not in the classes file {classes_file}"
                           f"{f' (nor are {len(unknown) - 1} more)' if len(unknown) > 1 else ''}: add it there")
    return pinned


def _pin_to_split_file(found: Found, split_file) -> None:
    """Keep exactly the files ``split_file`` lists, in its splits; a listed file that is gone is an error."""
    path = Path(split_file)
    listed = {_clean_rel(row["path"]): (line, _label(row["label"]), _csv_split(row["split"], path, line))
              for line, row in _read_table(path, ("path", "label", "split"), "split file")}
    present = {s.rel: s for s in found.samples}
    gone = [rel for rel in listed if rel not in present]
    if gone:
        raise DatasetError(f"{len(gone)} file(s) of the split file {path} are gone from {found.where}, e.g. "
                           f"{gone[0]}: restore them (the run was trained on them), or train afresh without it")
    for rel, (line, label, _) in listed.items():
        if present[rel].label != label:
            raise DatasetError(f"{rel} is labelled {present[rel].label}, but {label} in the split file {path} "
                               f"(line {line}): the data changed since that run; restore the label or train afresh")
    found.unlisted = len(present) - len(listed)
    found.samples = [present[rel]._replace(split=split) for rel, (_, _, split) in listed.items()]
    found.split_how = f"pinned by {path}"


# ---------------------------------------------------------------------------------------------------------
# The seeded, stratified split


def split_counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """``(test, val)`` files of a class of ``n``: each fraction of ``n`` rounded half up, at least 1 when the class
    has 3 or more files and the fraction is above 0; whatever else happens, 1 file stays in train."""
    test = math.floor(round(n * test_fraction, 9) + 0.5)
    val = math.floor(round(n * val_fraction, 9) + 0.5)
    if n >= 3:
        test, val = max(test, int(test_fraction > 0)), max(val, int(val_fraction > 0))
    while test + val > n - 1 and test + val > 0:
        if val >= test:
            val -= 1  # validation gives way first: the test split is what results are reported on
        else:
            test -= 1
    return test, val


def _rank(seed: int, rel: str) -> bytes:
    return hashlib.blake2b(f"{seed}\n{rel}".encode(), digest_size=8).digest()


def _assign_splits(found: Found, present: set[str], test_fraction: float, val_fraction: float, seed: int) -> None:
    """Take the splits the source lacks from its training files, class by class (see the module docstring)."""
    fractions = {"test": 0.0 if "test" in present else test_fraction, "val": 0.0 if "val" in present else val_fraction}
    if "test" not in present and test_fraction <= 0:
        raise DatasetError(f"{found.where} has no test split: pass a test fraction above 0 (--test-fraction) or "
                           "add a test folder / split column")
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in found.samples:
        if sample.split in (None, "train"):
            by_class[sample.label].append(sample)
    moved: dict[str, str] = {}
    for group in by_class.values():
        ranked = sorted(group, key=lambda s: _rank(seed, s.rel))
        test, val = split_counts(len(ranked), fractions["test"], fractions["val"])
        moved.update({s.rel: "test" for s in ranked[:test]} | {s.rel: "val" for s in ranked[test:test + val]})
    found.samples = [s._replace(split=moved.get(s.rel, s.split or "train")) for s in found.samples]
    taken = [f"{name} {fractions[name]:g}" for name in ("val", "test") if fractions[name] > 0]
    given = "folders" if found.layout == "splits" else "column"
    how = [f"split {given} ({', '.join(sorted(present))})"] * bool(present)
    how += [f"seeded stratified split of each class's training files (seed {seed}: {', '.join(taken)})"] * bool(taken)
    found.split_how = "; ".join(how)


def find_samples(path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
                 classes_file=None, split_file=None) -> Found:
    """The samples of a folder or CSV (see the module docstring), with their classes and splits, in order."""
    where = Path(path).expanduser().absolute()
    if where.is_file():
        found, present = _find_in_csv(where)
    elif where.is_dir():
        found, present = _find_in_folder(where)
    else:
        raise DatasetError(f"{where} does not exist: pass a folder of class folders, a folder with train/ and test/ "
                           "folders, or a CSV file (path,label[,split])")
    if split_file is not None:
        _pin_to_split_file(found, split_file)
    else:
        _assign_splits(found, present, test_fraction, val_fraction, split_seed)
    found.classes = _gather_classes(found, classes_file)
    index = {name: i for i, name in enumerate(found.classes)}
    found.samples.sort(key=lambda s: (SPLITS.index(s.split), path_key(s.within), index[s.label], s.rel))
    found.skipped.sort(key=path_key)
    found.ignored.sort(key=path_key)
    return found


# ---------------------------------------------------------------------------------------------------------
# Loading


def _check_options(image_size, color, resize, background, val_fraction, test_fraction, on_bad, workers) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0,
         f"the image size must be a positive whole number of pixels, not {image_size!r}")
    need(color in COLOR_MODES, f"--color must be one of {', '.join(COLOR_MODES)}, not {color!r}")
    need(resize in RESIZE_MODES, f"--resize must be one of {', '.join(RESIZE_MODES)}, not {resize!r}")
    need(on_bad in ON_BAD, f"--on-bad must be one of {', '.join(ON_BAD)}, not {on_bad!r}")
    need(len(tuple(background)) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in background),
         f"the background must be three values 0..255 (red, green, blue), not {background!r}")
    need(0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1,
         f"the validation and test fractions must be in [0, 1) and leave training files, not {val_fraction} "
         f"and {test_fraction}")
    need(workers is None or (isinstance(workers, int) and workers >= 1),
         f"workers must be a whole number of processes >= 1, not {workers!r}")


def load_image_folder(path, *, image_size: int, color: str = "auto", resize: str = "squash",
                      background=(255, 255, 255), val_fraction: float = 0.1, test_fraction: float = 0.2,
                      split_seed: int = 0, classes_file=None, on_bad: str = "error", split_file=None,
                      workers: int | None = None, progress: bool = True, log=print) -> ImageDataset:
    """The images of a folder or CSV (layouts, classes, sample order and split: the module docstring), decoded
    once into the cache (:mod:`.cache`) and returned memory-mapped as uint8 ``N x C x image_size x image_size``.

    ``color``: "auto" (1 channel when every image is grey, else RGB with grey images replicated), "grey" or
    "rgb". ``resize``: "squash", "crop" or "pad" (onto ``background``, which also fills transparent pixels).
    ``on_bad="error"``: files that cannot be decoded are one :class:`DatasetError` naming the first few;
    ``"skip"``: they are left out and listed in ``report["bad"]`` (:func:`write_bad_files`). Identical images
    with two labels are an error; the same image in two splits is a warning through ``log``.
    """
    background = tuple(background)
    _check_options(image_size, color, resize, background, val_fraction, test_fraction, on_bad, workers)
    found = find_samples(path, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                         classes_file=classes_file, split_file=split_file)
    _log_found(found, log)
    index = {name: i for i, name in enumerate(found.classes)}
    plan = cache.make_plan(found.where, found.root, [(s.rel, index[s.label], s.split) for s in found.samples],
                           found.classes, cache.Settings(image_size, color, resize, background))
    workers = workers or min(2, os.cpu_count() or 1)
    cached = cache.load_or_build(plan, workers=workers, progress=progress, log=log)
    _check_bad(found, cached.manifest, on_bad)
    _check_splits(found, cached.manifest)
    _check_conflicts(found, cached.manifest)
    _warn_duplicates(cached.manifest, log)
    return _dataset(found, plan, cached, split_seed, (val_fraction, test_fraction))


def _log_found(found: Found, log) -> None:
    counts = {split: sum(s.split == split for s in found.samples) for split in SPLITS}
    parts = [f"{found.where}: {len(found.samples):,} images in {len(found.classes)} classes ("
             + " / ".join(f"{split} {n:,}" for split, n in counts.items() if n) + ")"]
    if found.ignored:
        parts.append(f"{cache.plural(len(found.ignored), 'non-image file')} ignored (e.g. {found.ignored[0]})")
    if found.skipped:
        parts.append(f"skipped {', '.join(found.skipped[:3])}{' ...' if len(found.skipped) > 3 else ''}")
    if found.unlisted:
        parts.append(f"{cache.plural(found.unlisted, 'file')} not in the split file left out")
    log("; ".join(parts))
    trained = {s.label for s in found.samples if s.split == "train"}
    untrained = [c for c in found.classes if c not in trained]
    if untrained:
        log(f"warning: class(es) {', '.join(untrained[:3])} have no training images: the model cannot learn them")


def _check_bad(found: Found, manifest: dict, on_bad: str) -> None:
    bad = manifest["bad"]
    if not bad or (on_bad == "skip" and manifest["rows"]):
        return
    first = ", ".join(f"{rel} ({reason})" for rel, reason in bad[:3])
    fix = "fix or remove them, or pass --on-bad skip to leave them out" if on_bad == "error" else \
        "fix them: there is nothing left to train on"
    raise DatasetError(f"{len(bad):,} of {len(found.samples):,} files under {found.root} could not be read: "
                       f"{first}{' ...' if len(bad) > 3 else ''}; {fix}")


def _check_splits(found: Found, manifest: dict) -> None:
    for split in ("train", "test"):
        if not manifest["splits"][split]:
            bad = f" ({cache.plural(len(manifest['bad']), 'bad file')} left out)" if manifest["bad"] else ""
            raise DatasetError(f"{found.where} has no {split} images{bad}: add some, or change --test-fraction")


def _check_conflicts(found: Found, manifest: dict) -> None:
    conflicts = manifest["conflicts"]
    if conflicts:
        (a, label_a), (b, label_b) = conflicts[0]
        more = f" ({len(conflicts) - 1} more such pairs)" if len(conflicts) > 1 else ""
        raise DatasetError(f"the same image is labelled {found.classes[label_a]} ({a}) and {found.classes[label_b]} "
                           f"({b}) under {found.root}{more}: remove the wrongly labelled copy")


def _warn_duplicates(manifest: dict, log) -> None:
    groups = manifest["duplicates"]
    if groups:
        (split_a, a), (split_b, b) = groups[0][:2]
        log(f"warning: {cache.plural(len(groups), 'image')} found in more than one split (e.g. {split_a} {a} = "
            f"{split_b} {b}): scores on them measure memory, not generalisation; `inceptionlab data` lists them")


def _dataset(found: Found, plan: cache.Plan, cached: cache.Cached, seed: int, fractions) -> ImageDataset:
    manifest, images, labels = cached.manifest, cached.images, torch.from_numpy(cached.labels)
    bounds, start = {}, 0
    for split in SPLITS:
        bounds[split] = (start, start + manifest["splits"][split])
        start = bounds[split][1]
    part = {split: (torch.from_numpy(images[a:b]), labels[a:b]) for split, (a, b) in bounds.items()}
    info = DataInfo(found.classes, manifest["channels"], plan.settings.image_size, tuple(manifest["mean"]),
                    tuple(manifest["std"]), found.source, str(found.where), manifest["fingerprint"],
                    manifest["color"], plan.settings.resize, plan.settings.background)
    val = part["val"] if bounds["val"][1] > bounds["val"][0] else (None, None)
    return ImageDataset(*part["train"], *part["test"], info=info.check(), val_images=val[0], val_labels=val[1],
                        report=_report(found, cached, part, {"seed": seed, "val_fraction": fractions[0],
                                                             "test_fraction": fractions[1]}))


def _report(found: Found, cached: cache.Cached, part: dict, split: dict[str, Any]) -> dict[str, Any]:
    manifest = cached.manifest
    bad = {rel for rel, _ in manifest["bad"]}
    index = {name: i for i, name in enumerate(found.classes)}
    return {
        "source": found.source, "path": str(found.where), "root": str(found.root), "layout": found.layout,
        "split": {"how": found.split_how, **split},
        "counts": {name: class_counts(labels, found.classes) for name, (_, labels) in part.items()},
        "skipped": found.skipped, "ignored": {"count": len(found.ignored), "examples": found.ignored[:5]},
        "unlisted": found.unlisted,
        "bad": [{"path": rel, "reason": reason} for rel, reason in manifest["bad"]],
        "duplicates": [[{"split": s, "path": p} for s, p in group] for group in manifest["duplicates"]],
        **{key: manifest[key] for key in ("modes", "width", "height", "animated", "grey")},
        "cache": {"path": str(cached.directory), "hit": cached.hit, "reason": cached.reason},
        "samples": [(s.rel, index[s.label], s.split) for s in found.samples if s.rel not in bad],
    }


# ---------------------------------------------------------------------------------------------------------
# What a run keeps


def _write_new(path, text: str) -> None:
    """Write ``text`` atomically; an existing file with other content is kept and refused, never overwritten."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return  # the same assignments again (a resumed run): nothing to do
    except FileNotFoundError:
        atomic_write_text(path, text)
        return
    except (OSError, UnicodeDecodeError):
        pass
    raise DatasetError(f"{path} already exists with other content and is kept: write to another directory")


def write_split_csv(dataset: ImageDataset, path) -> None:
    """``path,label,split`` for every sample of ``dataset`` (a folder or CSV dataset): the ``split_file`` that
    makes evaluate, inspect and resume use exactly these images."""
    samples = dataset.report.get("samples")
    if samples is None:
        raise DatasetError("this dataset did not come from a folder or CSV: there is no split file to write")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "label", "split"))
    writer.writerows((rel, dataset.classes[label], split) for rel, label, split in samples)
    _write_new(path, buffer.getvalue())


def write_bad_files(dataset: ImageDataset, path) -> None:
    """The files left out with ``on_bad="skip"``, one per line: the path (relative to the data), a tab, why."""
    _write_new(path, "".join(f"{item['path']}\t{item['reason']}\n" for item in dataset.report.get("bad", [])))
