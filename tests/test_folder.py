"""Your own images (issue 24): data/folder.py finds the samples, classes and splits of a folder or CSV; data/cache.py
decodes each file once, in a check pass, into a memory-mapped cache. Every folder here is built in tmp_path with
Pillow, each bad input of the issue included; the cache lives in a temporary XDG_CACHE_HOME."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionlab.data import cache
from inceptionlab.data.folder import (
    load_image_folder,
    natural_key,
    split_counts,
    write_bad_files,
    write_split_csv,
)
from inceptionlab.errors import ConfigError, DatasetError

SIZE = 6  # every test image is 6 x 6, loaded at 6: no resampling, so rows equal the pixels written


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    """Each test's image cache in its own XDG_CACHE_HOME, never the user's ~/.cache; returns the images folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "inceptionlab" / "images"


def pixels(name: str, grey: bool = False) -> np.ndarray:
    """Random pixels seeded by ``name``: each file its own image (no accidental duplicates)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 256, (SIZE, SIZE) if grey else (SIZE, SIZE, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def make_classes(root: Path, counts: dict[str, int], grey: bool = False) -> dict[str, np.ndarray]:
    """``root/CLASS/<i>.png`` for each class; returns {path relative to root: pixels}."""
    written = {}
    for name, n in counts.items():
        for i in range(n):
            rel = f"{name}/{i}.png"
            written[rel] = save(root / rel, pixels(str(root / rel), grey))
    return written


def load(path, **options):
    """load_image_folder at SIZE, quietly; returns the dataset and the lines it logged."""
    logs: list[str] = []
    options = {"image_size": SIZE, "progress": False, "log": logs.append, **options}
    return load_image_folder(path, **options), logs


def rows(ds) -> dict[str, tuple[np.ndarray, int, str]]:
    """{path: (image C x H x W, label, split)} through report["samples"], which lists the rows in order."""
    images = {"train": ds.train_images, "val": ds.val_images, "test": ds.test_images}
    labels = {"train": ds.train_labels, "val": ds.val_labels, "test": ds.test_labels}
    seen: Counter = Counter()
    out = {}
    for rel, label, split in ds.report["samples"]:
        row = seen[split]
        assert int(labels[split][row]) == label
        out[rel] = (images[split][row].numpy(), label, split)
        seen[split] += 1
    assert all(len(images[s]) == n for s, n in seen.items())
    return out


def order(ds, split: str = "train") -> list[str]:
    return [rel for rel, _, s in ds.report["samples"] if s == split]


def as_chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------
# Classes and order


def test_natural_key_orders_numbers_as_numbers_and_ignores_case():
    names = ["img10.png", "img2.png", "Img1.png", "img1.png", "b", "A", "10", "2", "1"]
    assert sorted(names, key=natural_key) == ["1", "2", "10", "A", "b", "Img1.png", "img1.png", "img2.png",
                                              "img10.png"]


def test_classes_are_the_sub_folders_in_natural_order(tmp_path):
    make_classes(tmp_path / "d", {"10": 3, "2": 3, "1": 3, "b": 3, "A": 3})
    ds, _ = load(tmp_path / "d")
    assert ds.classes == ("1", "2", "10", "A", "b")
    assert ds.info.source == "folder" and ds.info.path == str(tmp_path / "d")
    for rel, (_, label, _) in rows(ds).items():
        assert ds.classes[label] == rel.split("/")[0]


class _Reversed:
    """os.scandir's iterator, reversed: a file system that lists in another order."""

    def __init__(self, entries):
        self._it = iter(list(entries)[::-1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self):
        pass


def test_the_listing_order_of_the_file_system_changes_nothing(tmp_path, monkeypatch):
    make_classes(tmp_path / "d", {"b": 5, "a": 5, "c": 5})
    (tmp_path / "d" / "a" / "deep").mkdir()
    save(tmp_path / "d" / "a" / "deep" / "7.png", pixels("deep"))
    first, _ = load(tmp_path / "d")
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": _Reversed(real(path)))
    second, _ = load(tmp_path / "d")
    assert second.report["samples"] == first.report["samples"] and second.classes == first.classes
    assert second.report["cache"]["hit"]  # the same files in the same rows: the same cache key


def test_hidden_and_junk_folders_and_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "d"
    make_classes(root, {"a": 3, "b": 3})
    for folder in (".ipynb_checkpoints", "__MACOSX", "__pycache__", ".git", "a/.ipynb_checkpoints"):
        save(root / folder / "0.png", pixels(folder))
    for junk in ("a/.DS_Store", "a/Thumbs.db", "a/desktop.ini", "a/notes.txt", "README.txt"):
        (root / junk).write_text("not an image")
    save(root / "a" / "._0.png", pixels("appledouble"))  # an AppleDouble file: an image suffix, not an image
    save(root / "a" / "sub" / "5.png", pixels("sub"))
    ds, logs = load(root)
    assert ds.classes == ("a", "b")
    assert ds.report["skipped"] == [".git", ".ipynb_checkpoints", "__MACOSX", "__pycache__", "a/.ipynb_checkpoints"]
    assert ds.report["ignored"]["count"] == 6
    assert set(ds.report["ignored"]["examples"]) <= {"README.txt", "a/._0.png", "a/.DS_Store", "a/desktop.ini",
                                                     "a/notes.txt", "a/Thumbs.db"}
    assert sorted(rows(ds)) == sorted(["a/0.png", "a/1.png", "a/2.png", "a/sub/5.png", "b/0.png", "b/1.png",
                                       "b/2.png"])
    assert "6 non-image files ignored" in logs[0] and "skipped .git, .ipynb_checkpoints, __MACOSX ..." in logs[0]


def test_sample_order_is_the_path_within_the_class_folder_then_the_class(tmp_path):
    root = tmp_path / "d"
    for rel in ("train/a/3.png", "train/a/10.png", "train/a/5.png", "train/b/1.png", "train/b/2.png",
                "train/b/5.png", "test/b/4.png", "test/a/0.png"):
        save(root / rel, pixels(rel))
    ds, _ = load(root, val_fraction=0)
    assert order(ds) == ["train/b/1.png", "train/b/2.png", "train/a/3.png", "train/a/5.png", "train/b/5.png",
                         "train/a/10.png"]
    assert order(ds, "test") == ["test/a/0.png", "test/b/4.png"]
    assert ds.val_images is None


# ---------------------------------------------------------------------------------------------------------
# Split folders


@pytest.mark.parametrize("names", [("train", "val", "test"), ("Train", "valid", "TEST"), ("train", "validation",
                                                                                           "test")])
def test_split_folders_and_their_synonyms(tmp_path, names):
    for name in names:
        make_classes(tmp_path / "d" / name, {"a": 2, "b": 3})
    ds, _ = load(tmp_path / "d")
    assert ds.report["layout"] == "splits" and ds.report["split"]["how"].startswith("split folders")
    assert ds.report["counts"] == {split: {"a": 2, "b": 3} for split in ("train", "val", "test")}
    assert all(rel.startswith(names[("train", "val", "test").index(split)] + "/")
               for rel, (_, _, split) in rows(ds).items())


def test_a_split_lacking_a_class_keeps_every_index(tmp_path):
    root = tmp_path / "d"
    make_classes(root / "train", {"a": 2, "b": 2, "c": 2})
    make_classes(root / "val", {"b": 2})
    make_classes(root / "test", {"a": 1, "c": 1})
    ds, _ = load(root)
    assert ds.classes == ("a", "b", "c")
    assert ds.test_labels.tolist() == [0, 2] and ds.val_labels.tolist() == [1, 1]
    assert ds.report["counts"]["test"] == {"a": 1, "b": 0, "c": 1}


@pytest.mark.parametrize("folders, message", [
    (("train/a", "train/b", "cat"), "mixes split folders (train) with other folders (cat)"),
    (("train/a", "train/b", "val/a", "valid/b"), "has two val folders, val and valid"),
    (("val/a", "val/b", "test/a"), "has test, val but no train folder"),
], ids=["mixed", "two-val", "no-train"])
def test_split_folder_layout_errors(tmp_path, folders, message):
    for folder in folders:
        save(tmp_path / "d" / folder / "0.png", pixels(folder))
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path / "d")


def test_a_missing_val_or_test_split_is_taken_from_train_per_class(tmp_path):
    make_classes(tmp_path / "v" / "train", {"a": 10, "b": 20})
    make_classes(tmp_path / "v" / "test", {"a": 1, "b": 1})
    ds, _ = load(tmp_path / "v", val_fraction=0.2)
    assert ds.report["counts"] == {"train": {"a": 8, "b": 16}, "val": {"a": 2, "b": 4}, "test": {"a": 1, "b": 1}}
    assert all(rel.startswith("train/") for rel in order(ds, "val"))
    make_classes(tmp_path / "t" / "train", {"a": 10, "b": 20})
    make_classes(tmp_path / "t" / "val", {"a": 1, "b": 1})
    ds, _ = load(tmp_path / "t", test_fraction=0.3)
    assert ds.report["counts"] == {"train": {"a": 7, "b": 14}, "val": {"a": 1, "b": 1}, "test": {"a": 3, "b": 6}}


def test_without_a_test_split_a_test_fraction_is_needed(tmp_path):
    make_classes(tmp_path / "d", {"a": 5, "b": 5})
    with pytest.raises(DatasetError, match="has no test split: pass a test fraction above 0"):
        load(tmp_path / "d", test_fraction=0)


def test_val_fraction_zero_means_no_validation_split(tmp_path):
    make_classes(tmp_path / "d", {"a": 10, "b": 10})
    ds, _ = load(tmp_path / "d", val_fraction=0)
    assert ds.val_images is None and ds.val_labels is None
    assert ds.report["counts"]["val"] == {"a": 0, "b": 0} and len(ds.test_images) == 4


# ---------------------------------------------------------------------------------------------------------
# CSV


def test_a_csv_names_files_relative_to_its_own_folder(tmp_path, monkeypatch):
    written = make_classes(tmp_path / "imgs", {"a": 4, "b": 4})
    meta = tmp_path / "meta"
    meta.mkdir()
    lines = ["label,path,split,comment"] + [
        f"{'cat' if rel.startswith('a') else 'dog'},{'./' if i % 2 else ''}../imgs/{rel},"
        f"{['train', 'Validation', 'test', 'train'][i % 4]},ignored" for i, rel in enumerate(written)]
    (meta / "labels.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "x" / "y").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "x" / "y")  # relative to the CSV's folder, not to the working directory
    ds, _ = load(meta / "labels.csv")
    assert ds.classes == ("cat", "dog") and ds.info.source == "csv" and ds.report["layout"] == "csv"
    got = rows(ds)
    assert len(got) == 8 and {split for _, _, split in got.values()} == {"train", "val", "test"}
    for rel, (image, label, _) in got.items():
        assert rel.startswith("../imgs/") and np.array_equal(image, as_chw(written[rel[len("../imgs/"):]]))
        assert ds.classes[label] == ("cat" if rel.startswith("../imgs/a/") else "dog")


def test_a_csv_without_a_split_column_is_split_by_seed(tmp_path):
    written = make_classes(tmp_path, {"a": 10, "b": 10})
    (tmp_path / "all.csv").write_text("path,label\n" + "".join(f"{rel},{rel[0]}\n" for rel in written))
    ds, _ = load(tmp_path / "all.csv")
    assert ds.report["counts"]["test"] == {"a": 2, "b": 2} and ds.report["counts"]["val"] == {"a": 1, "b": 1}


@pytest.mark.parametrize("content, message", [
    ("file,label\na/0.png,a\n", r"lacks the column\(s\) path: its first line must name path,label"),
    ("path,label,split\na/0.png,a,train\nb/0.png,b,training\n", "line 3: split 'training' is none of train"),
    ("path,label\na/0.png,a\nnope.png,b\n", r"lists 1 file\(s\) that do not exist, e.g. line 3: nope.png"),
    ("path,label\na/0.png,a\nb/0.png,b\na/0.png,a\n", r"lists a/0.png twice \(lines 2 and 4\)"),
    ("path,label\na/0.png,a\nb/0.png,\n", "line 3: an empty path or label"),
    ("path,label\na/0.png,a\na/1.png,a\n", r"has one class \(a\): a classifier needs two or more labels"),
    ("path,label\n", "lists no images"),
], ids=["column", "split", "missing", "twice", "empty", "one-class", "no-rows"])
def test_csv_errors_name_the_line(tmp_path, content, message):
    make_classes(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load(tmp_path / "labels.csv")


def test_a_csv_label_missing_from_the_classes_file_is_an_error(tmp_path):
    written = make_classes(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"{rel},{'cat' if rel.startswith('a') else 'bird'}\n" for rel in written))
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DatasetError, match="class bird of .* is not in the classes file .*classes.txt: add it"):
        load(tmp_path / "labels.csv", classes_file=tmp_path / "classes.txt")


# ---------------------------------------------------------------------------------------------------------
# Classes file, class-count errors


def test_a_classes_file_pins_the_order_and_may_name_absent_classes(tmp_path):
    make_classes(tmp_path / "d", {"a": 3, "b": 3, "c": 3})
    (tmp_path / "classes.txt").write_text("c\n\nb\na\nd\n")
    ds, _ = load(tmp_path / "d", classes_file=tmp_path / "classes.txt")
    assert ds.classes == ("c", "b", "a", "d")
    assert all(ds.classes[label] == rel[0] for rel, (_, label, _) in rows(ds).items())
    assert ds.report["counts"]["train"]["d"] == 0


@pytest.mark.parametrize("content, message", [
    ("a\nb\n", "class c of .* is not in the classes file"),
    ("a\nb\nc\nb\n", "names b twice"),
    ("a\n", r"names 1 class\(es\)"),
], ids=["unknown", "repeated", "one"])
def test_a_classes_file_refuses_unknown_or_repeated_names(tmp_path, content, message):
    make_classes(tmp_path / "d", {"a": 3, "b": 3, "c": 3})
    (tmp_path / "classes.txt").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load(tmp_path / "d", classes_file=tmp_path / "classes.txt")


def test_zero_classes_one_class_and_an_empty_class_folder_are_errors(tmp_path):
    (tmp_path / "none" / ".hidden").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"none has no class folders: put each class's images in a sub-folder"):
        load(tmp_path / "none")
    make_classes(tmp_path / "one", {"a": 3})
    with pytest.raises(DatasetError, match=r"one has one class \(a\): a classifier needs two or more class folders"):
        load(tmp_path / "one")
    make_classes(tmp_path / "empty", {"a": 3})
    (tmp_path / "empty" / "b").mkdir()
    (tmp_path / "empty" / "b" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"class folder .*empty/b has no images \(1 other file, e.g. b/notes.txt\)"):
        load(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist: pass a folder of class folders"):
        load(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------
# The seeded split


def test_split_counts_round_half_up_keep_one_of_each_from_three_files_and_one_for_training():
    assert [split_counts(n, 0.2, 0.1) for n in (1, 2, 3, 5, 7, 10, 100)] == [
        (0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (2, 1), (20, 10)]
    assert split_counts(3, 0.5, 0.4) == (1, 1) and split_counts(2, 0.5, 0.0) == (1, 0)
    assert split_counts(4, 0.0, 0.1) == (0, 1) and split_counts(25, 0.1, 0.0) == (3, 0)


def test_the_split_is_stratified_seeded_and_the_same_every_time(tmp_path):
    make_classes(tmp_path / "d", {"a": 20, "b": 20, "c": 7})
    first, _ = load(tmp_path / "d")
    assert first.report["counts"] == {"train": {"a": 14, "b": 14, "c": 5}, "val": {"a": 2, "b": 2, "c": 1},
                                      "test": {"a": 4, "b": 4, "c": 1}}
    again, _ = load(tmp_path / "d")
    assert again.report["samples"] == first.report["samples"]
    other, _ = load(tmp_path / "d", split_seed=1)
    assert set(order(other, "test")) != set(order(first, "test"))
    assert other.report["counts"] == first.report["counts"]


def test_a_split_file_pins_the_assignments_and_leaves_new_files_out(tmp_path):
    make_classes(tmp_path / "d", {"a": 10, "b": 10})
    first, _ = load(tmp_path / "d")
    write_split_csv(first, tmp_path / "split.csv")
    text = (tmp_path / "split.csv").read_text().splitlines()
    assert text[0] == "path,label,split" and len(text) == 21 and text[1].endswith(",a,train")
    save(tmp_path / "d" / "a" / "new.png", pixels("new"))
    pinned, logs = load(tmp_path / "d", split_seed=7, val_fraction=0.3, split_file=tmp_path / "split.csv")
    assert pinned.report["samples"] == first.report["samples"] and pinned.report["unlisted"] == 1
    assert "1 file not in the split file left out" in logs[0] and "pinned by" in pinned.report["split"]["how"]
    (tmp_path / "d" / "b" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"1 file\(s\) of the split file .* are gone from .*, e.g. b/3.png"):
        load(tmp_path / "d", split_file=tmp_path / "split.csv")


def test_a_split_file_refuses_a_changed_label(tmp_path):
    written = make_classes(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{rel},{rel[0]}\n" for rel in written))
    ds, _ = load(tmp_path / "labels.csv")
    write_split_csv(ds, tmp_path / "split.csv")
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"{rel},{'b' if rel == 'a/0.png' else rel[0]}\n" for rel in written))
    with pytest.raises(DatasetError, match=r"a/0.png is labelled b, but a in the split file .* \(line \d+\)"):
        load(tmp_path / "labels.csv", split_file=tmp_path / "split.csv")


def test_a_file_someone_saved_is_never_overwritten(tmp_path):
    make_classes(tmp_path / "d", {"a": 3, "b": 3})
    ds, _ = load(tmp_path / "d")
    write_split_csv(ds, tmp_path / "split.csv")
    write_split_csv(ds, tmp_path / "split.csv")  # the same content again (a resumed run): fine
    for write, name in ((write_split_csv, "split.csv"), (write_bad_files, "bad_files.txt")):
        (tmp_path / name).write_text("mine\n")
        with pytest.raises(DatasetError, match=f"{name} already exists with other content and is kept"):
            write(ds, tmp_path / name)
        assert (tmp_path / name).read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------------------
# Bad files, duplicates


def bad_folder(root: Path) -> None:
    make_classes(root, {"a": 3, "b": 3})
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "a" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "b" / "fake.png").write_text("not a PNG at all")


def test_bad_files_are_one_error_naming_them_and_the_flag(tmp_path):
    bad_folder(tmp_path / "d")
    with pytest.raises(DatasetError) as error:
        load(tmp_path / "d")
    message = str(error.value)
    assert "\n" not in message and message.startswith("2 of 8 files under")
    assert "a/truncated.jpg (" in message and "b/fake.png (" in message
    assert message.endswith("fix or remove them, or pass --on-bad skip to leave them out")


def test_bad_files_skipped_are_listed_and_written(tmp_path, monkeypatch):
    bad_folder(tmp_path / "d")
    with pytest.raises(DatasetError):
        load(tmp_path / "d")
    monkeypatch.setattr(cache, "decode_image", None)  # the failed check's cache is complete: nothing is decoded
    ds, _ = load(tmp_path / "d", on_bad="skip")
    assert ds.report["cache"]["hit"] and len(rows(ds)) == 6
    assert sorted(item["path"] for item in ds.report["bad"]) == ["a/truncated.jpg", "b/fake.png"]
    write_bad_files(ds, tmp_path / "bad_files.txt")
    lines = (tmp_path / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == ["a/truncated.jpg", "b/fake.png"]
    assert all(line.split("\t")[1] for line in lines)


def test_only_bad_files_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    (tmp_path / "d" / "a" / "0.png").write_text("x")
    (tmp_path / "d" / "b" / "0.png").write_text("y")
    with pytest.raises(DatasetError, match="2 of 2 files .* could not be read: .*; fix them: there is nothing left"):
        load(tmp_path / "d", on_bad="skip", test_fraction=0.5)


def test_a_split_left_empty_by_bad_files_is_an_error(tmp_path):
    make_classes(tmp_path / "d" / "train", {"a": 3, "b": 3})
    for name in ("a", "b"):
        (tmp_path / "d" / "test" / name).mkdir(parents=True)
        (tmp_path / "d" / "test" / name / "0.png").write_text("not a PNG")
    with pytest.raises(DatasetError, match=r"d has no test images \(2 bad files left out\): add some"):
        load(tmp_path / "d", on_bad="skip")


def test_identical_images_with_two_labels_are_an_error_naming_both(tmp_path):
    make_classes(tmp_path / "d", {"a": 3, "b": 3})
    shutil.copy(tmp_path / "d" / "a" / "1.png", tmp_path / "d" / "b" / "copy.png")
    with pytest.raises(DatasetError, match=r"the same image is labelled a \(a/1.png\) and b \(b/copy.png\)"):
        load(tmp_path / "d")


def test_the_same_image_in_train_and_test_is_a_warning(tmp_path):
    make_classes(tmp_path / "d" / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "d" / "test", {"a": 1, "b": 1})
    shutil.copy(tmp_path / "d" / "train" / "a" / "1.png", tmp_path / "d" / "test" / "a" / "9.png")
    ds, logs = load(tmp_path / "d", val_fraction=0)
    assert ds.report["duplicates"] == [[{"split": "train", "path": "train/a/1.png"},
                                        {"split": "test", "path": "test/a/9.png"}]]
    assert any(line.startswith("warning: 1 image found in more than one split (e.g. train train/a/1.png = test "
                               "test/a/9.png)") for line in logs)


# ---------------------------------------------------------------------------------------------------------
# Colour, animation


def test_grey_among_rgb_images_gives_rgb_with_the_grey_ones_replicated(tmp_path):
    grey = make_classes(tmp_path / "d", {"a": 6}, grey=True)  # a/0.png is row 0: written before any colour row
    colour = make_classes(tmp_path / "d", {"b": 6})
    ds, _ = load(tmp_path / "d")
    assert ds.channels == 3 and ds.info.color == "rgb" and ds.report["grey"] == 6
    for rel, (image, _, _) in rows(ds).items():
        expected = np.repeat(grey[rel][None], 3, 0) if rel in grey else as_chw(colour[rel])
        assert np.array_equal(image, expected), rel


def test_all_grey_images_give_one_channel(tmp_path):
    written = make_classes(tmp_path / "d", {"a": 4, "b": 4}, grey=True)
    flat = np.repeat(pixels("rgb-grey", grey=True)[..., None], 3, 2)  # an RGB file with R = G = B
    written["b/rgb.png"] = save(tmp_path / "d" / "b" / "rgb.png", flat)[..., 0]
    ds, _ = load(tmp_path / "d")
    assert ds.channels == 1 and ds.info.color == "grey" and len(ds.info.mean) == 1
    assert ds.report["modes"] == {"L": 8, "RGB": 1}
    for rel, (image, _, _) in rows(ds).items():
        assert np.array_equal(image, written[rel][None]), rel


def test_an_animated_file_gives_its_first_frame_and_is_counted(tmp_path):
    make_classes(tmp_path / "d", {"a": 3, "b": 3}, grey=True)
    frames = [Image.fromarray(np.full((SIZE, SIZE), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "d" / "a" / "anim.gif", save_all=True, append_images=frames[1:])
    ds, _ = load(tmp_path / "d")
    assert ds.report["animated"] == 1
    assert (rows(ds)["a/anim.gif"][0] == 10).all()


# ---------------------------------------------------------------------------------------------------------
# The cache


def test_a_cache_hit_decodes_nothing(tmp_path, monkeypatch):
    make_classes(tmp_path / "d", {"a": 5, "b": 5})
    first, _ = load(tmp_path / "d")
    assert not first.report["cache"]["hit"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit decoded a file")

    monkeypatch.setattr(cache, "decode_image", no_decoding)
    second, logs = load(tmp_path / "d")
    assert second.report["cache"] == {**first.report["cache"], "hit": True}
    assert torch.equal(second.train_images, first.train_images) and second.info == first.info
    assert logs[-1].startswith("images: 10 decoded images from the cache ")


@pytest.mark.parametrize("change, reason", [
    ("touch", "1 file changed since the cache was built (1 edited)"),
    ("add", "1 file changed since the cache was built (1 added)"),
    ("remove", "1 file changed since the cache was built (1 removed)"),
    ("size", "the settings changed (image_size 6 -> 3)"),
])
def test_the_cache_is_rebuilt_when_a_file_or_setting_changes_and_says_why(tmp_path, cache_home, change, reason):
    make_classes(tmp_path / "d", {"a": 5, "b": 5})
    first, _ = load(tmp_path / "d")
    old = Path(first.report["cache"]["path"])
    size = SIZE
    if change == "touch":
        stat = os.stat(tmp_path / "d" / "a" / "2.png")
        os.utime(tmp_path / "d" / "a" / "2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    elif change == "add":
        save(tmp_path / "d" / "b" / "new.png", pixels("new"))
    elif change == "remove":
        (tmp_path / "d" / "b" / "4.png").unlink()
    else:
        size = 3
    second, logs = load(tmp_path / "d", image_size=size)
    # the seeded split may move a file or two as well ("; 1 file moved to another label or split")
    assert second.report["cache"]["hit"] is False and second.report["cache"]["reason"].startswith(reason)
    assert any(line.startswith("images: rebuilding") and reason in line for line in logs)
    kept = change in ("add", "size")  # an edited or removed file's cache can never be read again: deleted
    assert old.exists() == kept
    assert sorted(p.name for p in cache_home.iterdir()) == sorted(
        ["index.json", "index.lock", Path(second.report["cache"]["path"]).name] + [old.name] * kept)


def test_an_interrupted_build_is_not_used_and_is_rebuilt(tmp_path, monkeypatch):
    make_classes(tmp_path / "d", {"a": 5, "b": 5})
    real, calls = cache.decode_image, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path / "d")
    monkeypatch.setattr(cache, "decode_image", real)
    ds, logs = load(tmp_path / "d")
    assert ds.report["cache"]["reason"] == "an earlier build of this cache was interrupted or damaged"
    assert len(rows(ds)) == 10 and any("interrupted" in line for line in logs)
    assert sorted(p.name for p in Path(ds.report["cache"]["path"]).iterdir()) == [
        "files.json", "images.npy", "labels.npy", "lock", "manifest.json"]


def test_images_are_read_through_a_memory_map_of_the_cache(tmp_path):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux's /proc/self/maps")
    make_classes(tmp_path / "d", {"a": 10, "b": 10})
    load(tmp_path / "d")
    ds, _ = load(tmp_path / "d")  # a hit: read back from the cache
    npy = str(Path(ds.report["cache"]["path"]) / "images.npy")
    regions = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in maps.read_text().splitlines()
               if line.endswith(npy)]
    for images in (ds.train_images, ds.val_images, ds.test_images):
        assert any(start <= images.data_ptr() < end for start, end in regions)
    ds.train_images[0] += 1  # copy-on-write: writable in memory, never written back to the cache
    assert load(tmp_path / "d")[0].train_images[0].tolist() != ds.train_images[0].tolist()


def test_rows_follow_the_natural_order_of_file_names_with_their_pixels(tmp_path):
    """9.png < 10.png < 100.png, as numbers, whatever their string order; each row holds its file's pixels."""
    names = [("a", 9), ("a", 10), ("a", 100), ("b", 1), ("b", 20)]
    written = {f"train/{c}/{i}.png": save(tmp_path / "d" / "train" / c / f"{i}.png", pixels(f"{c}{i}"))
               for c, i in names}
    make_classes(tmp_path / "d" / "test", {"a": 1, "b": 1})
    ds, _ = load(tmp_path / "d", val_fraction=0)
    assert order(ds) == ["train/b/1.png", "train/a/9.png", "train/a/10.png", "train/b/20.png", "train/a/100.png"]
    assert all(np.array_equal(image, as_chw(written[rel])) for rel, (image, _, split) in rows(ds).items()
               if split == "train")


def test_the_fingerprint_hashes_a_split_chunk_by_chunk_as_its_whole_bytes():
    import hashlib

    from inceptionlab.data.dataset import content_fingerprint

    images, labels = torch.randint(0, 256, (5, 1, 3, 3), dtype=torch.uint8), torch.arange(5)
    expected = hashlib.sha256()
    for part in (images.numpy().tobytes(), labels.numpy().tobytes(), b"cat"):
        expected.update(len(part).to_bytes(8, "little") + part)
    assert content_fingerprint(images, labels, "cat", chunk=4) == expected.hexdigest()
    assert content_fingerprint(images[1:], labels, "cat", chunk=4) != expected.hexdigest()


@pytest.mark.parametrize("options, message", [
    ({"color": "colour"}, "--color must be one of auto, grey, rgb, not 'colour'"),
    ({"resize": "stretch"}, "--resize must be one of squash, crop, pad"),
    ({"on_bad": "ignore"}, "--on-bad must be one of error, skip"),
    ({"image_size": 0}, "the image size must be a positive whole number"),
    ({"background": (0, 0)}, "the background must be three values 0..255"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "the validation and test fractions must be in"),
    ({"workers": 0}, "workers must be a whole number of processes >= 1"),
], ids=["color", "resize", "on_bad", "image_size", "background", "fractions", "workers"])
def test_options_are_checked_before_anything_is_read(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path / "nowhere", **options)


# ---------------------------------------------------------------------------------------------------------
# Worker processes, torchrun, real images (slower: they start processes)


@pytest.mark.slow
def test_worker_processes_give_the_rows_one_process_gives(tmp_path, monkeypatch):
    bad_folder(tmp_path / "d")
    make_classes(tmp_path / "d", {"c": 30}, grey=True)
    monkeypatch.setattr(cache, "PROBE_SECONDS", 0)  # one task decoded here, the rest always on the pool
    monkeypatch.setattr(cache, "POOL_PAYS_SECONDS", -1)
    pool, logs = load(tmp_path / "d", workers=2, on_bad="skip")
    assert any("files/s, 2 processes), 2 bad" in line for line in logs)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    one, logs = load(tmp_path / "d", workers=1, on_bad="skip")
    assert any("files/s, 1 process), 2 bad" in line for line in logs)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(pool, f"{split}_images"), getattr(one, f"{split}_images"))
        assert torch.equal(getattr(pool, f"{split}_labels"), getattr(one, f"{split}_labels"))
    assert pool.report["bad"] == one.report["bad"] and pool.info == one.info


_RANK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import inceptionlab.data.cache as cache
    from inceptionlab.data.folder import load_image_folder

    real = cache.decode_image
    def slow(*args, **kwargs):
        time.sleep(0.05)  # a build that lasts: the other process starts while it runs
        return real(*args, **kwargs)
    cache.decode_image = slow
    Path(sys.argv[2]).touch()
    while len(list(Path(sys.argv[2]).parent.glob("ready-*"))) < 2:
        time.sleep(0.01)
    ds = load_image_folder(sys.argv[1], image_size=6, progress=False, workers=1)
    print("hit" if ds.report["cache"]["hit"] else "built")
""")


@pytest.mark.slow
def test_one_process_builds_while_another_waits_and_reads(tmp_path):
    make_classes(tmp_path / "d", {"a": 15, "b": 15})
    (tmp_path / "sync").mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "PYTHONPATH": os.pathsep.join([str(Path(cache.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK, str(tmp_path / "d"), str(tmp_path / "sync" / f"ready-{r}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    lines = [out.strip().splitlines() for out, _ in outputs]
    assert sorted(line[-1] for line in lines) == ["built", "hit"]
    waiter = next(line for line in lines if line[-1] == "hit")
    assert any(line.startswith("images: waiting for another process building the cache") for line in waiter)


@pytest.mark.slow
def test_scikit_learn_digits_come_back_exactly_in_the_documented_order(tmp_path):
    """Real images made by no one here: scikit-learn's 1,797 digits (8 x 8, values 0..16) as PNG class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    for i, (image, target) in enumerate(zip(images, digits.target, strict=True)):
        save(tmp_path / "digits" / str(target) / f"{i}.png", image)
    ds, _ = load(tmp_path / "digits", image_size=8)
    assert ds.classes == tuple(str(d) for d in range(10)) and ds.channels == 1
    seen = []
    for split in ("train", "val", "test"):
        index = [int(Path(rel).stem) for rel in order(ds, split)]
        assert index == sorted(index)  # files named by their index come back in the index order
        assert np.array_equal(getattr(ds, f"{split}_images")[:, 0].numpy(), images[index])
        assert np.array_equal(getattr(ds, f"{split}_labels").numpy(), digits.target[index])
        seen += index
    assert sorted(seen) == list(range(len(images)))
    per_class = np.bincount(digits.target)
    assert [ds.report["counts"]["test"][str(d)] for d in range(10)] == [split_counts(n, 0.2, 0.1)[0]
                                                                         for n in per_class]
