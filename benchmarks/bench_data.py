"""Data pipeline throughput: inceptionlab's DeviceLoader vs a d2l-style DataLoader, plus the memory of loading.

    python benchmarks/bench_data.py --out bench_data.json [--device cpu] [--batches 200]

The d2l side is ``load_data_fashion_mnist(128, resize=96)`` rebuilt without torchvision: per-image PIL
bilinear resize to 96 and ToTensor (uint8 / 255), 4 worker processes, batch 128, shuffled. Both sides produce
the same pixels (tests/test_data.py checks that), so this compares only how they are produced.
Not a test: the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch
from PIL import Image


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class D2LStyleDataset(torch.utils.data.Dataset):
    """One image at a time through PIL, as torchvision's Resize + ToTensor do."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i]).resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).unsqueeze(0).float().div(255)
        return x, int(self.labels[i])


def _time_batches(iterator, batches: int, device: torch.device) -> tuple[float, float]:
    """(seconds to the first batch, steady batches per second over the next ``batches``)."""
    start = time.perf_counter()
    x, _ = next(iterator)
    first = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(iterator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return first, batches / (time.perf_counter() - start)


def _endless(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_device_loaders(on_device, args, device: torch.device) -> dict:
    """Our DeviceLoader on the 28 px split (resized per batch), then on the split resized once up front."""
    from inceptionlab.data import DeviceLoader
    from inceptionlab.data.resize import pre_resize

    loader = DeviceLoader(on_device.train_images, on_device.train_labels, args.batch_size,
                          image_size=args.size, shuffle=True, seed=0)
    ours_first, ours_bps = _time_batches(_endless(loader), args.batches, device)

    # What the trainer's setup does when the split fits (inceptionlab.data.resize.pre_resize): resample each split
    # once to uint8 at the target size (the same pixels), so a batch is one gather and one division. Timed too.
    start = time.perf_counter()
    resized = pre_resize(on_device.train_images, args.size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    pre_resize_s = time.perf_counter() - start
    pre_loader = DeviceLoader(resized, on_device.train_labels, args.batch_size, image_size=args.size,
                              shuffle=True, seed=0)
    pre_first, pre_bps = _time_batches(_endless(pre_loader), args.batches, device)
    return {"ours_first": ours_first, "ours_bps": ours_bps, "pre_resize_s": pre_resize_s, "pre_first": pre_first,
            "pre_bps": pre_bps, "epoch_batches": len(pre_loader)}


def build_result(args, device, t: dict, load: dict) -> dict:
    """The JSON: both loaders' batches/s, the pre-resized loader over one and ten epochs, the cost of loading."""
    ours_bps, d2l_bps, pre_bps, epoch_batches = t["ours_bps"], t["d2l_bps"], t["pre_bps"], t["epoch_batches"]
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "image_size": args.size,
        "device_loader": {
            "batches_per_s": round(ours_bps, 1),
            "images_per_s": round(ours_bps * args.batch_size),
            "first_batch_s": round(t["ours_first"], 4),
            "timed_batches": args.batches,
        },
        "d2l_dataloader": {
            "batches_per_s": round(d2l_bps, 1),
            "images_per_s": round(d2l_bps * args.batch_size),
            "first_batch_s": round(t["d2l_first"], 4),
            "timed_batches": args.d2l_batches,
            "workers": args.workers,
        },
        "speedup": round(ours_bps / d2l_bps, 2),
        "pre_resized_loader": {
            "one_time_resize_s": round(t["pre_resize_s"], 2),
            "batches_per_s": round(pre_bps, 1),
            "images_per_s": round(pre_bps * args.batch_size),
            "first_batch_s": round(t["pre_first"], 4),
            "resized_uint8_mib": round(t["train_images"] * args.size**2 / 2**20, 1),
        },
        "speedup_pre_resized_steady": round(pre_bps / d2l_bps, 2),
        # one epoch (and ten) of batches, the one-time resize included, against the DataLoader's epoch(s)
        "speedup_pre_resized_1_epoch": round((epoch_batches / d2l_bps) / (t["pre_resize_s"] + epoch_batches / pre_bps),
                                             2),
        "speedup_pre_resized_10_epochs": round(
            (10 * epoch_batches / d2l_bps) / (t["pre_resize_s"] + 10 * epoch_batches / pre_bps), 2),
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=200, help="timed batches for the DeviceLoader")
    parser.add_argument("--d2l-batches", type=int, default=100, help="timed batches for the DataLoader")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the DeviceLoader side")
    args = parser.parse_args()
    if args.threads:
        # On an oversubscribed CPU, OpenMP's spinning threads can cost more than they give.
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from inceptionlab.data import load_fashion_mnist
    from inceptionlab.fileio import atomic_write_json

    rss_before = _max_rss_mib()
    start = time.perf_counter()
    ds = load_fashion_mnist(progress=False)
    load_s = time.perf_counter() - start
    rss_after = _max_rss_mib()
    stored_mib = sum(t.numel() * t.element_size() for t in (ds.train_images, ds.train_labels,
                                                            ds.test_images, ds.test_labels)) / 2**20
    timings = {**time_device_loaders(ds.to(device), args, device), "train_images": len(ds.train_labels)}
    d2l_loader = torch.utils.data.DataLoader(
        D2LStyleDataset(ds.train_images.numpy(), ds.train_labels.numpy(), args.size),
        batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
    )
    timings["d2l_first"], timings["d2l_bps"] = _time_batches(iter(d2l_loader), args.d2l_batches, torch.device("cpu"))
    load = {
        "seconds": round(load_s, 3),
        "peak_rss_increase_mib": round(rss_after - rss_before, 1),
        "stored_uint8_mib": round(stored_mib, 1),
        "float_copy_at_size_mib_avoided": round(70_000 * args.size**2 * 4 / 2**20, 1),
    }
    result = build_result(args, device, timings, load)
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
