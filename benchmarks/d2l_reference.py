"""The reference: d2l's chapter run as d2l runs it, transcribed without torchvision (and without d2l).

    python benchmarks/d2l_reference.py --device cuda --epochs 10 --json ref.json
    python benchmarks/d2l_reference.py --device cpu --limit-train 4224 --limit-test 1024 --json ref.json

What is kept from d2l 1.0.3 / the chapter's PyTorch tab, line for line where it costs time:
- ``load_data_fashion_mnist(128, resize=96)``: a map-style dataset handing out one PIL image at a time,
  ``transforms.Resize(96)`` (PIL bilinear, antialiased, on the uint8 image) then ``ToTensor`` (uint8 / 255,
  1 x H x W float), a ``DataLoader`` with 4 worker processes (``get_dataloader_workers()``), shuffled
  training set, unshuffled test set, batch 128 for both; workers re-forked every epoch as in d2l.
- the model: the chapter's ``nn.Sequential`` GoogLeNet (b1..b5, ``nn.Linear(1024, 10)``), fp32, NCHW.
- ``train_ch6``: Xavier-uniform init of every Conv2d/Linear weight, plain SGD, cross-entropy; per step
  ``zero_grad``, ``X.to(device)``, forward, backward, step, then under ``no_grad``
  ``metric.add(l * X.shape[0], d2l.accuracy(y_hat, y), X.shape[0])``, whose ``float()`` calls synchronise
  the host with the device every step; d2l's ``Timer`` runs around each step; ``evaluate_accuracy_gpu``
  after every epoch. d2l's printed figure is ``metric[2] * num_epochs / timer.sum()`` examples/sec.
What differs, and why it can only make the reference faster: no Animator (d2l redraws a matplotlib figure
5 times per epoch), and the IDX files are read with ``inceptionlab.data`` (the same reader our trainer uses,
so both sides pay the same for it; torchvision reads them too, from its own cache).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

# --------------------------------------------------------------------------------------------- data (d2l 3.5)


class FashionMNIST(Dataset):
    """``torchvision.datasets.FashionMNIST(..., transform=Compose([Resize(resize), ToTensor()]))``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resize: int | None):
        self.data, self.targets, self.resize = images, labels, resize

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy())  # uint8 H x W -> mode "L", as torchvision does
        if self.resize:
            # Resize(int) on a square image: both sides to `resize`, PIL bilinear (antialiased by PIL itself)
            img = img.resize((self.resize, self.resize), Image.BILINEAR)
        # ToTensor: H x W x C uint8 -> C x H x W float / 255
        x = torch.from_numpy(np.array(img, np.uint8, copy=True))
        x = x.view(img.size[1], img.size[0], 1).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return x, target


def load_data_fashion_mnist(batch_size, resize=None, *, limit_train=None, limit_test=None, workers=4,
                            data_dir=None):
    from inceptionlab.data import load_fashion_mnist

    raw = load_fashion_mnist(data_dir, download=False, progress=False)
    train_x, train_y, test_x, test_y = raw.train_images, raw.train_labels, raw.test_images, raw.test_labels
    if limit_train:
        train_x, train_y = train_x[:limit_train], train_y[:limit_train]
    if limit_test:
        test_x, test_y = test_x[:limit_test], test_y[:limit_test]
    return (DataLoader(FashionMNIST(train_x, train_y, resize), batch_size, shuffle=True, num_workers=workers),
            DataLoader(FashionMNIST(test_x, test_y, resize), batch_size, shuffle=False, num_workers=workers))


# --------------------------------------------------------------------------------------------- the chapter's model


class Inception(nn.Module):
    def __init__(self, in_channels, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet() -> nn.Sequential:
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, 10))


# --------------------------------------------------------------------------------------------- d2l's training loop


class Timer:
    def __init__(self):
        self.times = []

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def sum(self):
        return sum(self.times)


class Accumulator:
    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args, strict=True)]

    def __getitem__(self, idx):
        return self.data[idx]


def accuracy(y_hat, y):
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net, data_iter, device=None):
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X = X.to(device)
            y = y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device, log=print):
    def init_weights(m):
        if type(m) is nn.Linear or type(m) is nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)

    net.apply(init_weights)
    log(f"training on {device}")
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    timer = Timer()
    epochs, batch_sizes = [], []  # batch sizes: only for the steady-state figure (a list append per step)
    for epoch in range(num_epochs):
        metric = Accumulator(3)
        net.train()
        for X, y in train_iter:
            timer.start()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741 - d2l's name
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
            timer.stop()
            batch_sizes.append(X.shape[0])
        train_l, train_acc = metric[0] / metric[2], metric[1] / metric[2]
        test_acc = evaluate_accuracy_gpu(net, test_iter)
        epochs.append({"epoch": epoch + 1, "train_loss": train_l, "train_acc": train_acc, "test_acc": test_acc})
        log(f"epoch {epoch + 1}: loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    examples_per_sec = metric[2] * num_epochs / timer.sum()
    log(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    log(f"{examples_per_sec:.1f} examples/sec on {device}")
    return {"epochs": epochs, "step_seconds": timer.times, "batch_sizes": batch_sizes,
            "d2l_examples_per_sec": examples_per_sec, "test_acc": test_acc, "train_acc": train_acc,
            "train_loss": train_l}


# --------------------------------------------------------------------------------------------- the command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes (d2l: 4)")
    parser.add_argument("--limit-train", type=int, help="train on the first N images only (CPU measurements)")
    parser.add_argument("--limit-test", type=int, help="evaluate on the first N test images only")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the steady-state figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)  # d2l does not seed; this changes nothing in the timing
    train_iter, test_iter = load_data_fashion_mnist(
        args.batch_size, resize=args.image_size, limit_train=args.limit_train, limit_test=args.limit_test,
        workers=args.workers, data_dir=args.data_dir)
    net = googlenet()
    result = train_ch6(net, train_iter, test_iter, args.epochs, args.lr, device,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    steps = result["step_seconds"][args.warmup_steps:]
    images = sum(result.pop("batch_sizes")[args.warmup_steps:])
    result.update(
        side="d2l reference",
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
        num_parameters=sum(p.numel() for p in net.parameters()),
        train_images=len(train_iter.dataset),
        test_images=len(test_iter.dataset),
        # steady state: the timed steps after the first `warmup_steps`
        steady_images_per_sec=images / sum(steps) if steps else None,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_worker_rss_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        peak_gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    )
    result["step_seconds"] = [round(t, 6) for t in result["step_seconds"]]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
