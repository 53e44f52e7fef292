"""Your own images at Fashion-MNIST's scale: Fashion-MNIST written as 70,000 PNG class folders, then the folder
loader's first start (the check pass decodes every file once into the cache) and its second start (from the cache),
against loading the IDX files. BENCHMARKS.md quotes a run.

    python benchmarks/bench_own_images.py --work /tmp/own-images [--size 28] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from inceptionlab.data import DataSpec, load_data
from inceptionlab.data.export import export_folder


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="a scratch folder (emptied first)")
    p.add_argument("--size", type=int, default=28, help="decode size (default 28, the files' own)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ["XDG_CACHE_HOME"] = str(args.work / "cache")
    idx, idx_s = timed(lambda: load_data(DataSpec(), progress=False, log=None))
    _, export_s = timed(lambda: export_folder(idx, args.work / "fashion"))
    spec = DataSpec(path=str(args.work / "fashion"), image_size=args.size, val_fraction=0.0,
                    classes_file=str(args.work / "fashion" / "classes.txt"))
    first, first_s = timed(lambda: load_data(spec, progress=False, log=None))
    second, second_s = timed(lambda: load_data(spec, progress=False, log=None))
    same = bool((first.train_images == idx.train_images).all()) if args.size == 28 else None
    result = {"images": len(idx.train_labels) + len(idx.test_labels), "size": args.size, "idx_load_s": idx_s,
              "export_s": export_s, "first_start_s": first_s, "decode_rate_img_s": (len(first.train_labels) +
              len(first.test_labels)) / first_s, "second_start_s": second_s, "same_pixels_as_idx": same,
              "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
