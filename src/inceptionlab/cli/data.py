"""``inceptionlab data``: where Fashion-MNIST is, whether it verified, class counts, and a grid of samples."""

from __future__ import annotations

import argparse
from pathlib import Path

from inceptionlab.cli._args import positive_int, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="locate, verify and describe Fashion-MNIST",
        description="Find Fashion-MNIST (--data-dir, $INCEPTIONLAB_DATA, the user cache, Debian's "
        "/usr/share/datasets/fashion-mnist, else download into the cache), verify its content (SHA-256 of the "
        "decompressed files, IDX headers, counts) and report class counts; optionally write a grid of samples.",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="directory holding the four IDX files (.gz or not)")
    p.add_argument("--grid", type=Path, default=None, metavar="PNG", help="write a grid of training samples here")
    p.add_argument("--samples", type=positive_int, default=18, help="images in the grid (default 18)")
    p.add_argument("--no-download", action="store_true", help="never download; fail if the files are not found")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inceptionlab import data

    ds = data.load_fashion_mnist(args.data_dir, download=not args.no_download, progress=not args.json)
    report = {
        "directory": str(Path(ds.paths["train_images"]).parent),
        "files": {key: str(path) for key, path in ds.paths.items()},
        "verified": ds.verified,
        "splits": {
            split: {
                "examples": len(getattr(ds, f"{split}_labels")),
                "class_counts": data.class_counts(getattr(ds, f"{split}_labels")),
            }
            for split in ("train", "test")
        },
        "train_pixel_mean": round(ds.train_images.double().mean().item() / 255, 7),
        "train_pixel_std": round(ds.train_images.double().std().item() / 255, 7),
    }
    if args.grid is not None:
        n = min(args.samples, len(ds.train_labels))
        from inceptionlab.plots import save_image_grid

        save_image_grid(ds.train_images[:n], ds.train_labels[:n], args.grid)
        report["grid"] = str(args.grid)
    if args.json:
        print_json(report)
        return 0
    print(f"Fashion-MNIST in {report['directory']}")
    for key, path in report["files"].items():
        print(f"  {key:<13} {path}")
    status = "SHA-256, IDX headers and counts verified" if ds.verified else "NOT verified (verify=False)"
    print(f"  {status}")
    for split, info in report["splits"].items():
        counts = ", ".join(f"{name} {count}" for name, count in info["class_counts"].items())
        print(f"{split}: {info['examples']:,} examples ({counts})")
    print(f"train pixels: mean {report['train_pixel_mean']:.4f}, std {report['train_pixel_std']:.4f}")
    if args.grid is not None:
        print(f"wrote {args.grid}")
    return 0
