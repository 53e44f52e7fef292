"""What the explorer page shows, computed for one run: a prediction with any branches knocked out (through the
prefix cache of :mod:`inceptionlab.prefix`, so a toggle re-runs only from the first ablated block), the anatomy
of a block, the input-size table (:mod:`inceptionlab.analysis`), the curves, a confusion matrix and each branch's
most activating test images. No HTTP here: :mod:`inceptionlab.explore.server` serves these dicts as JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import os
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inceptionlab import analysis, runs
from inceptionlab.argcheck import PATH, check, optional, whole
from inceptionlab.data.resize import resize_batch
from inceptionlab.deploy.predict import ImageError, load_run_image
from inceptionlab.devices import DEVICE
from inceptionlab.errors import ConfigError
from inceptionlab.inputs import class_names, prepare_input
from inceptionlab.inspect import INSPECT_JSON, OUT_SUBDIR, BranchStats, LoadedRun, inspect_run, load_run, select_blocks
from inceptionlab.models import get_model_spec
from inceptionlab.models._blocks import flatten_outputs
from inceptionlab.prefix import MODES, PrefixCache, block_steps, branch_outputs, forward_steps, replacement

COMPARED = ("alexnet", "vgg11", "nin")  # the earlier chapters' networks, for the size panel's cost table
TOP_IMAGES = 6  # most activating test images shown per branch
TILES = 6  # feature maps shown per branch


def png_data_url(pixels: torch.Tensor, scale: int = 1) -> str:
    """A ``C x H x W`` float image in [0, 1] (grey or RGB) as a ``data:image/png`` URL, enlarged ``scale`` times."""
    from PIL import Image

    array = (pixels.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_off(text: str | None) -> dict[str, list[int]]:
    """``"b3.0:1,b4.2:3"`` (block:branch, branches counted from 1 as inspect counts them) -> ``{block: [0-based]}``."""
    off: dict[str, list[int]] = {}
    for item in filter(None, (text or "").split(",")):
        block, _, branch = item.rpartition(":")
        if not block or not branch.isdigit() or int(branch) < 1:
            raise ConfigError(f"knockout {item!r} is not BLOCK:BRANCH (e.g. b3.0:1, branches counted from 1)")
        off.setdefault(block, []).append(int(branch) - 1)
    return off


@dataclasses.dataclass
class Subset:
    """One pass over the first ``count`` test images: predictions, each block's branch statistics (the means a
    mean ablation uses) and each branch's mean activation per image."""

    count: int
    predicted: torch.Tensor
    stats: dict[str, BranchStats]
    activation: dict[str, list[torch.Tensor]]  # block -> per branch, (count,) mean activation per image


class Explorer:
    """A loaded run and the current image's prefix cache. One inference at a time: every public method takes
    the lock (the HTTP server is threaded)."""

    def __init__(self, run_dir: str | os.PathLike, *, data_dir=None, device: str = "cpu", subset: int = 500):
        check(run_dir=(run_dir, PATH), data_dir=(data_dir, optional(PATH)), device=(device, DEVICE),
              subset=(subset, whole(1)))
        self.run: LoadedRun = load_run(run_dir, data_dir=data_dir, device=device)
        self.blocks = dict(select_blocks(self.run.model, self.run.config.model, None))
        self.steps = forward_steps(self.run.model)
        self.index = block_steps(self.steps)
        self.names = class_names(self.run.config)
        self.subset_size = min(subset, len(self.run.labels))
        self.lock = threading.Lock()
        self.uploads: dict[str, torch.Tensor] = {}  # id -> the model's input for an uploaded picture
        self._key, self._cache, self._subset = None, None, None
        self.job: dict = {"state": "idle"}  # the background inspect run, for the page's progress bar
        self.run.model.eval()

    # -------------------------------------------------------------------------------------- images, cache

    def pixels(self, image: int | None = None, upload: str | None = None) -> tuple[torch.Tensor, int | None]:
        """The model's input (``1 x C x S x S`` in [0, 1]) for test image ``image`` or an upload, and its label."""
        if upload is not None:
            if upload not in self.uploads:
                raise ConfigError(f"no upload {upload!r}: upload the picture again")
            return self.uploads[upload], None
        count = len(self.run.data.test_labels)
        if not isinstance(image, int) or not 0 <= image < count:
            raise ConfigError(f"test image {image!r} is out of range; pass 0..{count - 1}")
        x = resize_batch(self.run.data.test_images[image : image + 1], self.run.config.image_size)
        return x.to(self.run.images.device), int(self.run.data.test_labels[image])

    def add_upload(self, data: bytes, invert: bool | str = "auto") -> str:
        """Decode an uploaded picture as predict does (bombs and non-images: ImageError); returns its id."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                x = load_run_image(path, self.run.config, invert)[0]
            except ImageError as exc:  # the temporary path means nothing to the user
                raise ImageError(str(exc).replace(str(path), "the uploaded picture")) from None
        key = f"u{len(self.uploads)}"
        with self.lock:
            self.uploads[key] = x.unsqueeze(0).to(self.run.images.device)
            while len(self.uploads) > 16:  # a long session keeps the latest pictures only
                self.uploads.pop(next(iter(self.uploads)))
        return key

    def _prefix(self, key, x: torch.Tensor) -> PrefixCache:
        if key != self._key:
            # float32 even for a bf16 run: one picture's answer is `inceptionlab predict`'s and the ONNX file's
            with torch.inference_mode():
                self._cache = PrefixCache(self.steps, prepare_input(x, self.run.config))
            self._key = key
        return self._cache

    def _replaces(self, off: dict[str, list[int]], mode: str) -> dict[int, dict]:
        unknown = [b for b in off if b not in self.blocks]
        if unknown:
            raise ConfigError(f"unknown block {', '.join(unknown)}; the blocks are {', '.join(self.blocks)}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        stats = self.subset().stats if mode == "mean" and off else {}
        replaces = {}
        for block, branches in off.items():
            count = len(self._cache.branches[self.index[block]])
            if any(not 0 <= i < count for i in branches):
                raise ConfigError(f"{block} has branches 1..{count}")
            replaces[self.index[block]] = {i: replacement(mode, stats[block].means(i) if stats else None)
                                           for i in branches}
        return replaces

    def _probabilities(self, key, x: torch.Tensor, off: dict[str, list[int]], mode: str) -> torch.Tensor:
        cache = self._prefix(key, x)
        replaces = self._replaces(off, mode)
        with torch.inference_mode():
            logits = cache.logits(replaces)
        return torch.softmax(logits.float()[0], dim=0).cpu()

    # ------------------------------------------------------------------------------------------ answers

    def predict(self, image: int | None = None, upload: str | None = None, off: dict | None = None,
                mode: str = "zero") -> dict:
        """Class probabilities with the branches in ``off`` ablated (``{block: [0-based branches]}``)."""
        with self.lock:
            x, label = self.pixels(image, upload)
            probs = self._probabilities((image, upload), x, off or {}, mode)
        return {"image": image, "upload": upload, "label": label, "mode": mode, "input": png_data_url(x[0], 4),
                "off": {b: sorted(i + 1 for i in v) for b, v in (off or {}).items()},
                "predicted": int(probs.argmax()), "name": self.names[int(probs.argmax())],
                "probabilities": [round(float(p), 6) for p in probs]}

    def knockout(self, image: int | None = None, upload: str | None = None, mode: str = "zero",
                 limit: int = 8) -> dict:
        """A small set of branches whose removal changes the prediction: every single branch first (so a set of
        one is the smallest), then greedily the branch that lowers the predicted class most, then each member
        dropped again while the prediction still changes. ``found`` is False after ``limit`` branches."""
        with self.lock:
            x, _ = self.pixels(image, upload)
            key = (image, upload)
            base = int(self._probabilities(key, x, {}, mode).argmax())
            units = [(b, i) for b in self.blocks for i in range(len(self._cache.branches[self.index[b]]))]

            def score(chosen):
                off: dict[str, list[int]] = {}
                for b, i in chosen:
                    off.setdefault(b, []).append(i)
                probs = self._probabilities(key, x, off, mode)
                return int(probs.argmax()) != base, float(probs[base])

            chosen, evaluations = [], 0
            while len(chosen) < limit:
                tried = {u: score([*chosen, u]) for u in units if u not in chosen}
                evaluations += len(tried)
                flips = [u for u, (changed, _) in tried.items() if changed]
                if flips:
                    chosen.append(min(flips, key=lambda u: tried[u][1]))
                    break
                chosen.append(min(tried, key=lambda u: tried[u][1]))
            found = score(chosen)[0]
            for u in list(chosen) if found else []:
                if len(chosen) > 1 and score([c for c in chosen if c != u])[0]:
                    chosen.remove(u)
        return {"found": found, "off": [f"{b}:{i + 1}" for b, i in chosen], "evaluations": evaluations,
                "method": "single branches, then greedy, then pruned"}

    def anatomy(self, block: str, image: int | None = None, upload: str | None = None) -> dict:
        """The block's branches for this image: channels, parameters, multiply-adds, a few feature maps."""
        if block not in self.blocks:
            raise ConfigError(f"unknown block {block!r}; the blocks are {', '.join(self.blocks)}")
        with self.lock:
            x, _ = self.pixels(image, upload)
            cache = self._prefix((image, upload), x)
            i = self.index[block]
            inputs, outputs = cache.inputs[i], cache.branches[i]
            costs = branch_costs(self.blocks[block], inputs[:1].float())
        branches, start = [], 0
        for j, (out, (params, macs)) in enumerate(zip(outputs, costs, strict=True)):
            maps = torch.cat(flatten_outputs([out]), dim=1)[0].float().cpu()
            branches.append({"branch": j + 1, "channels": maps.shape[0], "shape": list(maps.shape),
                             "channel_range": [start, start + maps.shape[0]], "params": params, "macs": macs,
                             "tiles": feature_tiles(maps)})
            start += maps.shape[0]
        return {"block": block, "kind": type(self.blocks[block]).__name__, "input_shape": list(inputs.shape[1:]),
                "out_channels": start, "branches": branches}

    def subset(self) -> Subset:
        """The subset pass, computed once (the caller holds the lock)."""
        if self._subset is None:
            self._subset = subset_pass(dataclasses.replace(self.run, images=self.run.images[: self.subset_size],
                                                           labels=self.run.labels[: self.subset_size]), self.blocks)
        return self._subset

    def confusion(self) -> dict:
        with self.lock:
            sub = self.subset()
        k = len(self.names)
        labels = self.run.labels[: sub.count].cpu()
        matrix = torch.zeros(k * k, dtype=torch.int64).scatter_add_(0, labels * k + sub.predicted,
                                                                    torch.ones_like(labels)).view(k, k)
        return {"count": sub.count, "classes": self.names, "matrix": matrix.tolist()}

    def pair(self, true: int, predicted: int, limit: int = 48) -> dict:
        """The test images of class ``true`` taken for ``predicted`` (within the subset), as thumbnails."""
        with self.lock:
            sub = self.subset()
        labels = self.run.labels[: sub.count].cpu()
        hits = ((labels == true) & (sub.predicted == predicted)).nonzero().flatten()[:limit].tolist()
        return {"true": true, "predicted": predicted, "images": [self.thumbnail(i) for i in hits]}

    def specialists(self, block: str) -> dict:
        """Per branch, the test images (of the subset) whose mean activation of the branch output is highest."""
        if block not in self.blocks:
            raise ConfigError(f"unknown block {block!r}; the blocks are {', '.join(self.blocks)}")
        with self.lock:
            sub = self.subset()
        rows = []
        for j, act in enumerate(sub.activation[block]):
            top = torch.sort(act, descending=True, stable=True).indices[:TOP_IMAGES].tolist()
            rows.append({"branch": j + 1, "images": [{**self.thumbnail(i), "activation": round(float(act[i]), 5)}
                                                    for i in top]})
        return {"block": block, "count": sub.count, "branches": rows}

    def thumbnail(self, index: int) -> dict:
        return {"index": index, "label": int(self.run.data.test_labels[index]),
                "src": png_data_url(self.run.data.test_images[index].float() / 255, 2)}

    # ---------------------------------------------------------------------------------- run, drops, sizes

    def summary(self) -> dict:
        config = self.run.config
        return {"run_dir": str(self.run.run_dir), "model": config.model, "image_size": config.image_size,
                "channels": config.in_channels, "classes": self.names, "test_count": len(self.run.data.test_labels),
                "subset": self.subset_size, "natural_size": get_model_spec(config.model).natural_size,
                "blocks": [{"block": b, "kind": type(m).__name__, "branches": len(m.parallel_branches())}
                           for b, m in self.blocks.items()],
                "drops": self.drops(), "metrics": runs.read_metrics(self.run.run_dir), "modes": list(MODES)}

    def drops(self) -> dict | None:
        """``{block: [{branch, mean_drop, zero_drop}, ...]}`` from the run's inspect.json, if there is one."""
        path = self.run.run_dir / OUT_SUBDIR / INSPECT_JSON
        if not path.is_file():
            return None
        report = json.loads(path.read_text())
        return {"count": report["count"], "test_acc": report["test_acc"],
                "blocks": {b["block"]: [{k: r[k] for k in ("branch", "mean_drop", "zero_drop")}
                                        for r in b["branches"]] for b in report["blocks"]}}

    def start_inspect(self, limit: int) -> dict:
        """``inspect`` on the first ``limit`` test images in a background thread; :attr:`job` tells its progress."""
        if self.job["state"] == "running":
            return self.job
        self.job = {"state": "running", "done": 0, "total": None, "limit": limit}

        def progress(done, total):
            self.job.update(done=done, total=total)

        def work():
            try:
                with self.lock:  # one inference at a time, this one included
                    inspect_run(self.run.run_dir, data=self.run.data, limit_test=limit, progress=False,
                                on_batch=progress, device=str(self.run.images.device.type))
                self.job = {"state": "done", "limit": limit}
            except Exception as exc:  # the page shows it; the server keeps serving
                self.job = {"state": "failed", "error": str(exc).splitlines()[0]}

        threading.Thread(target=work, daemon=True, name="inceptionlab-inspect").start()
        return self.job

    def sizes(self, size: int) -> dict:
        """Stage shapes at ``size`` (or where the model stops accepting it) and the cost against AlexNet/VGG/NiN."""
        config = self.run.config
        report = analysis.input_size_report(config.model, verify=False, in_channels=config.in_channels)
        out = {"size": size, "accepted": report.describe(), "min_size": report.min_size, "ok": report.accepts(size)}
        if out["ok"]:
            out["stages"] = [{"name": s.name, "shape": s.shape, "params": s.params} for s in
                             analysis.stage_shapes(config.model, size, config.in_channels, config.num_classes)]
        else:
            out["error"] = f"{config.model} cannot take {size}x{size}: it accepts {report.describe()}"
        out["costs"] = [c.to_dict() for c in analysis.cost_table(size, [config.model, *COMPARED])]
        return out


# ------------------------------------------------------------------------------------------------ helpers


def branch_costs(block: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """(parameters, multiply-adds) of each branch for one input: the modules a branch runs (found with forward
    hooks, each counted once) and FlopCounterMode's FLOPs / 2 (analysis.py's convention)."""
    ran: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, _a, _o: ran.append(m)) for m in block.modules()]
    costs = []
    try:
        for branch in block.parallel_branches():
            ran.clear()
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                branch(x)
            params = sum(p.numel() for m in dict.fromkeys(ran) for p in m.parameters(recurse=False))
            costs.append((params, counter.get_total_flops() // 2))
    finally:
        for hook in hooks:
            hook.remove()
    return costs


def feature_tiles(maps: torch.Tensor, count: int = TILES) -> list[dict]:
    """The ``count`` channels with the most energy, each scaled to [0, 1] on its own, as PNG data URLs."""
    energy = maps.square().sum(dim=(1, 2))
    top = torch.sort(energy, descending=True, stable=True).indices[:count].tolist()
    scale = max(1, 48 // max(maps.shape[1:]))
    tiles = []
    for c in top:
        m = maps[c]
        low, high = float(m.min()), float(m.max())
        tile = (m - low) / (high - low) if high > low else torch.zeros_like(m)
        tiles.append({"channel": c, "src": png_data_url(tile[None], scale)})
    return tiles


def subset_pass(run: LoadedRun, blocks: dict[str, nn.Module]) -> Subset:
    """One evaluation of ``run``'s (subset) test images recording predictions, branch statistics and each branch's
    mean activation per image."""
    stats = {b: BranchStats() for b in blocks}
    activation: dict[str, list[list[torch.Tensor]]] = {b: [] for b in blocks}
    predicted: list[torch.Tensor] = []

    def record(name, block, x):
        outputs = branch_outputs(block, x)
        stats[name].add(outputs)
        activation[name].append([torch.cat(flatten_outputs([o]), 1).float().mean(dim=(1, 2, 3)).cpu()
                                 for o in outputs])
        return block.merge(x, flatten_outputs(outputs))

    hook = run.model.register_forward_hook(lambda _m, _a, out: predicted.append(out.float().argmax(dim=1).cpu()))
    try:
        run.evaluate({m: functools.partial(record, b, m) for b, m in blocks.items()})
    finally:
        hook.remove()
    per_branch = {b: [torch.cat(col) for col in zip(*rows, strict=True)] for b, rows in activation.items()}
    return Subset(len(run.labels), torch.cat(predicted), stats, per_branch)

