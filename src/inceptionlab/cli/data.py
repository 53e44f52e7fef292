"""``inceptionlab data``: what a dataset holds (Fashion-MNIST, or your own images with --data PATH): classes and
counts per split, imbalance, sizes and colour modes, skipped and bad files, duplicates, a grid of samples per class;
and ``--export-folder`` to write it as PNG class folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from inceptionlab.cli._args import positive_int, print_json
from inceptionlab.cli.train import add_folder_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="describe a dataset (Fashion-MNIST or your own images), export it as image folders",
        description="Without --data: find Fashion-MNIST (--data-dir, $INCEPTIONLAB_DATA, the user cache, Debian's "
        "/usr/share/datasets/fashion-mnist, else download into the cache) and verify its content. With --data PATH: "
        "read a folder of class folders, of split folders, or a CSV (docs/data.md), decode every image once into the "
        "cache and report what was found. Both: class counts per split, duplicates, a sample grid (--grid).",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="directory holding the four IDX files (.gz or not)")
    add_folder_options(p)
    p.add_argument("--image-size", type=positive_int, default=96, help="decode size for --data (default 96)")
    p.add_argument("--grid", type=Path, default=None, metavar="PNG", help="write a grid of training samples here")
    p.add_argument("--samples", type=positive_int, default=18, help="images in the grid (default 18)")
    p.add_argument("--export-folder", type=Path, default=None, metavar="DIR",
                   help="write the dataset as PNG class folders DIR/{train,test}/CLASS/ (and DIR/classes.txt)")
    p.add_argument("--no-download", action="store_true", help="never download; fail if the files are not found")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.set_defaults(func=run)


def _spec(args):
    """What to load, through the same TrainConfig fields and checks as `train --data` (inputs.data_spec)."""
    from inceptionlab.config import TrainConfig
    from inceptionlab.inputs import data_spec

    given = {k: getattr(args, k) for k in ("color", "resize_mode", "val_fraction", "test_fraction", "classes_file",
                                           "on_bad") if getattr(args, k) is not None}
    data_dir = None if args.data_dir is None else str(args.data_dir)
    return data_spec(TrainConfig(data=args.data, data_dir=data_dir, image_size=args.image_size, **given).validate())


def build_report(ds) -> dict:
    from inceptionlab.data import class_counts
    from inceptionlab.data.dataset import duplicate_report

    splits = {}
    for split in ("train", "val", "test"):
        labels = getattr(ds, f"{split}_labels")
        if labels is not None:
            counts = class_counts(labels, ds.classes)
            present = [c for c in counts.values() if c]
            splits[split] = {"examples": len(labels), "class_counts": counts,
                             "imbalance": round(max(present) / min(present), 3) if present else None}
    info = ds.info
    found = {k: v for k, v in ds.report.items() if k not in ("files", "samples")}
    return {"source": info.source, "path": info.path, "classes": list(info.classes), "channels": info.channels,
            "stored_size": info.image_size, "color": info.color, "resize": info.resize,
            "train_mean": list(info.mean), "train_std": list(info.std), "fingerprint": info.fingerprint,
            "files": {k: str(v) for k, v in ds.report.get("files", {}).items()}, "found": found, "splits": splits,
            "duplicates": duplicate_report(ds)}


def run(args: argparse.Namespace) -> int:
    from inceptionlab.data import load_data

    ds = load_data(_spec(args), progress=not args.json, download=not args.no_download,
                   log=None if args.json else print)
    report = build_report(ds)
    if args.grid is not None:
        from inceptionlab.plots import save_image_grid

        index = _one_row_per_class(ds.train_labels, args.samples, ds.num_classes)
        save_image_grid(ds.train_images[index], ds.train_labels[index], args.grid, ds.classes)
        report["grid"] = str(args.grid)
    if args.export_folder is not None:
        from inceptionlab.data.export import export_folder

        report["exported"] = {"folder": str(args.export_folder), "images": export_folder(ds, args.export_folder)}
    if args.json:
        print_json(report)
    else:
        print_report(report)
    return 0


def _one_row_per_class(labels, samples: int, num_classes: int):
    """Up to ``samples`` training images, taking each class in turn (a grid that shows every class)."""
    import torch

    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    order = [p[i] for i in range(max((len(p) for p in per_class), default=0)) for p in per_class if i < len(p)]
    return torch.stack(order[:samples]) if order else torch.zeros(0, dtype=torch.long)


def print_report(report: dict) -> None:
    where = report["path"] or (str(Path(next(iter(report["files"].values()))).parent) if report["files"] else "")
    print(f"{report['source']} in {where}: {len(report['classes'])} classes, {report['channels']} channel(s), "
          f"stored at {report['stored_size']} px ({report['color']}, {report['resize']})")
    for key, path in report["files"].items():
        print(f"  {key:<13} {path}")
    if "verified" in report["found"]:
        verified = report["found"]["verified"]
        print("  " + ("SHA-256, IDX headers and counts verified" if verified else "NOT verified (verify=False)"))
    for split, info in report["splits"].items():
        counts = ", ".join(f"{name} {count}" for name, count in info["class_counts"].items())
        print(f"{split}: {info['examples']:,} examples, imbalance {info['imbalance']} ({counts})")
    mean = ", ".join(f"{m:.4f}" for m in report["train_mean"])
    std = ", ".join(f"{s:.4f}" for s in report["train_std"])
    print(f"train pixels: mean {mean}, std {std}")
    for key in ("skipped", "ignored", "unlisted", "bad", "modes", "width", "height", "animated", "cache"):
        if report["found"].get(key):
            print(f"{key}: {report['found'][key]}")
    dup = report["duplicates"]
    print(f"identical images: {dup['same_label']} within a split (same label), {dup['conflicting_labels']} with "
          f"different labels, {dup['across_splits']} in two splits")
    for key in ("grid", "exported"):
        if key in report:
            print(f"wrote {report[key]}")
