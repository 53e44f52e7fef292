"""The folder loader's check pass and cached start-up (issue 24): images/s of the one decode pass on worker
processes, for small PNGs and for large JPEGs, and the time of a second load (a cache hit, nothing decoded).

    python benchmarks/bench_folder.py [--png 5000] [--jpeg 500] [--workers 2] [--jpeg-size 224] [--out FILE]

Folders, built once in --dir (default: a temporary directory, removed after):
  png   N Fashion-MNIST training images (the IDX files, as the data layer finds them) as 28 x 28 grey PNG class
        folders, loaded at 28 (no resampling);
  jpeg  M 2000 x 1500 JPEGs (quality 90) made from scikit-image's photos (astronaut, coffee, chelsea, rocket),
        upscaled and given a little seeded noise so every file is different and about as large as a photo,
        loaded at --jpeg-size (Pillow's draft mode decodes them at 1/2, 1/4 or 1/8 scale).
Each load uses its own XDG_CACHE_HOME. The first load's figure is files / the manifest's build seconds (the pass
with the worker start-up, the copy into the map, the statistics and the writes); the second load is timed whole.
Not a test: the figures depend on the machine and on whatever else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_png_folder(root: Path, count: int) -> None:
    from inceptionlab.data.fashion_mnist import find_dataset, read_idx

    paths = find_dataset()
    images, labels = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    for i in range(count):
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png")


def make_jpeg_folder(root: Path, count: int) -> None:
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB").resize((2000, 1500), Image.BICUBIC)
              for name in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(0)
    for i in range(count):
        base = np.asarray(photos[i % len(photos)], dtype=np.int16)
        noisy = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        folder = root / f"class{i % len(photos)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(folder / f"{i:04d}.jpg", quality=90)


def time_loads(folder: Path, cache: Path, image_size: int, workers: int) -> dict:
    """The first load (the check pass, building the cache) and the second (a hit), in this process."""
    from inceptionlab.data.folder import load_image_folder

    os.environ["XDG_CACHE_HOME"] = str(cache)
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    start = time.perf_counter()
    first = load_image_folder(folder, image_size=image_size, workers=workers, progress=False, log=lambda _: None)
    first_wall = time.perf_counter() - start
    manifest = json.loads((Path(first.report["cache"]["path"]) / "manifest.json").read_text())
    start = time.perf_counter()
    second = load_image_folder(folder, image_size=image_size, workers=workers, progress=False, log=lambda _: None)
    second_wall = time.perf_counter() - start
    assert second.report["cache"]["hit"] and not first.report["cache"]["hit"]
    return {"files": files, "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
            "image_size": image_size, "workers": workers, "processes_used": manifest["workers"],
            "channels": first.channels,
            "build_seconds": manifest["seconds"], "images_per_second": files / manifest["seconds"],
            "first_load_seconds": first_wall, "cached_load_seconds": second_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=int, default=5000)
    parser.add_argument("--jpeg", type=int, default=500)
    parser.add_argument("--jpeg-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="build the folders here and keep them (default: a temporary one)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-folder-"))
    import torch

    results = {"load_before": os.getloadavg(), "cores": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "pillow": Image.__version__, "cases": {}}
    try:
        for name, count, make, size in (("png", args.png, make_png_folder, 28),
                                        ("jpeg", args.jpeg, make_jpeg_folder, args.jpeg_size)):
            if not count:
                continue
            folder = base / f"{name}{count}"
            if not folder.exists():
                make(folder, count)
            shutil.rmtree(base / f"cache-{name}", ignore_errors=True)
            case = time_loads(folder, base / f"cache-{name}", size, args.workers)
            results["cases"][name] = case
            print(f"{name:5s} {case['files']:6,} files ({case['bytes'] / 2**20:7.1f} MiB) at {size:3d} px, "
                  f"{case['processes_used']} of {args.workers} workers: {case['images_per_second']:7.0f} images/s "
                  f"(build {case['build_seconds']:.1f} s), cached load {case['cached_load_seconds']:.2f} s",
                  flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f} "
          f"({results['cores']} cores)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
