"""Export a trained run to ONNX, check it in ONNX Runtime against PyTorch, and open it again safely.

The exported graph (``docs/deploy.md`` is the user-facing spec):

- input ``images``: float32 ``[N, C, S, S]`` (C = the data's channels, S = the run's image size), pixel values in
  [0, 1], light item on a dark background. N is dynamic. The run's normalization, if any, is inside the graph.
- output ``logits``: float32 ``[N, num_classes]`` (softmax them for probabilities).
- metadata props ``inceptionlab.*``: model, options, image size, class names, normalization, SHA-256 of the
  weights, so that ``predict --onnx`` can refuse a file that belongs to another run.

The file is written only after the check passes, atomically, and an existing file is kept unless ``force``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from inceptionlab import __version__, argcheck, runs
from inceptionlab.argcheck import FLAG, PATH, optional, whole
from inceptionlab.config import TrainConfig
from inceptionlab.data.resize import resize_batch
from inceptionlab.errors import ConfigError, InceptionLabError
from inceptionlab.fileio import atomic_write_with, remove_leftover_temp_files
from inceptionlab.inputs import class_names, data_info, load_run_dataset, normalization, pixel_model

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# 18 is the lowest opset the torch.export-based exporter writes (asking it for 17 silently gives 18), and
# ONNX Runtime has run it since 1.14. Lower opsets go through the older TorchScript exporter.
DEFAULT_OPSET = 18
MIN_DYNAMO_OPSET = 18
# ONNX Runtime guarantees opset 7 and up; at 5 and 6 it has no Relu-1 / Gemm-6 kernel and cannot load our graphs
# (ORT 1.32). 7-17 export through TorchScript and pass the check for every model (measured, torch 2.13).
MIN_OPSET = 7
PROBES = 4  # seeded images on which `predict --onnx` compares the file with the run's PyTorch model
META = "inceptionlab."
ATOL = 1e-4  # largest |logit difference| accepted between ONNX Runtime and PyTorch (fp32), per unit of logit size


class ONNXMismatchError(InceptionLabError, ValueError):
    """An ONNX file that does not belong to the run it is used with."""


def require_onnx():
    """Import onnx and onnxruntime, or explain how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise InceptionLabError(
            f"ONNX support needs the optional packages onnx, onnxruntime and onnxscript ({exc.msg}). "
            "Install them with `pip install 'inceptionlab[onnx]'`"
        ) from None
    return onnx, onnxruntime


def check_opset(opset: int) -> None:
    """Refuse, before any work, an opset that the exporter or ONNX Runtime cannot handle."""
    onnx, _ = require_onnx()
    newest = onnx.defs.onnx_opset_version()  # the installed onnx package's newest opset
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset {opset} is not supported: choose {MIN_OPSET}-{newest} (default {DEFAULT_OPSET}; "
                          f"ONNX Runtime cannot run our graphs below {MIN_OPSET})")


def ort_session(ort, model, what):
    """An ONNX Runtime CPU session of ``model`` (bytes or a path); what it cannot load is an ONNXMismatchError."""
    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ONNXMismatchError(f"ONNX Runtime cannot load {what} ({str(exc).splitlines()[0]})") from None


def metadata_for(config: TrainConfig, sha256: str, opset: int) -> dict[str, str]:
    norm = normalization(config)
    return {
        META + "format": "2",  # 2: per-channel normalization lists, the data record
        META + "version": __version__,
        META + "model": config.model,
        META + "model_options": json.dumps(config.model_options, sort_keys=True),
        META + "num_classes": str(config.num_classes),
        META + "in_channels": str(config.in_channels),
        META + "image_size": str(config.image_size),
        META + "class_names": json.dumps(class_names(config)),
        META + "normalization": json.dumps(
            {"in_graph": norm is not None, "mean": list(norm[0]), "std": list(norm[1])} if norm else {"in_graph": False}
        ),
        META + "data": json.dumps(_data_record(config)),
        META + "input": f"{INPUT_NAME}: float32 [N, C, S, S] pixels in [0, 1], prepared as the data was",
        META + "output": f"{OUTPUT_NAME}: float32 [N, num_classes]",
        META + "weights_sha256": sha256,
        META + "opset": str(opset),
    }


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns about torchvision ops and deprecations that do not concern a user of this command."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx_proto(model: torch.nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET):
    """``model`` (eval mode, [0, 1] pixels in, logits out) as an ONNX ModelProto with a dynamic batch axis."""
    onnx, _ = require_onnx()
    out = model(example)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model returns {type(out).__name__}, not a logits tensor; only eval mode exports")
    with _quiet_exporter():
        if opset >= MIN_DYNAMO_OPSET:
            # torch.export-based exporter (the default since PyTorch 2.9): traces without running Python
            # control flow twice and keeps the batch axis symbolic. verbose=False keeps stdout clean.
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
            proto = program.model_proto
        else:
            import io

            buffer = io.BytesIO()
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
            proto = onnx.load_from_string(buffer.getvalue())
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if written != opset:
        raise ConfigError(
            f"asked for opset {opset} but the exporter wrote opset {written}; choose --opset {MIN_OPSET}-{written}"
        )
    return proto


def compare_with_pytorch(session, model: torch.nn.Module, images: torch.Tensor, atol: float = ATOL) -> dict:
    """How far an ONNX Runtime session's logits are from the PyTorch model's on ``images``; ``ok`` says whether
    they agree (see :func:`check_onnx`). Runs the whole batch, then batches of 1 and 7."""
    with torch.inference_mode():
        expected = model(images).float()
    got = session_logits(session, images)
    parts = [session_logits(session, images[:1]), session_logits(session, images[1:8])]
    scale = max(1.0, expected.abs().max().item())
    tolerance = atol * scale
    report = {"images": len(images), "max_abs_logit_diff": float("inf"), "max_abs_logit": scale, "atol": atol,
              "tolerance": tolerance, "same_top1": 0, "near_ties": 0, "batch_sizes": [len(images), 1, 7],
              "ok": False}
    if [got.shape, *(p.shape for p in parts)] != [expected.shape, expected[:1].shape, expected[1:8].shape]:
        return report  # another graph's output
    small = torch.cat(parts)
    diff = max((got - expected).abs().max().item(), (small - expected[:8]).abs().max().item())
    top2 = expected.topk(min(2, expected.shape[1]), dim=1).values
    near_tie = (top2[:, 0] - top2[:, -1]) <= 2 * tolerance
    agree = got.argmax(1) == expected.argmax(1)
    report.update(max_abs_logit_diff=diff, same_top1=int(agree.sum()), near_ties=int(near_tie.sum()),
                  ok=bool(diff <= tolerance and (agree | near_tie).all()))
    return report


def check_onnx(session, model: torch.nn.Module, images: torch.Tensor, atol: float = ATOL) -> dict:
    """Compare an ONNX Runtime session with the PyTorch model on ``images`` ([0, 1] pixels).

    Runs the whole batch, then batches of 1 and 7 (the batch axis must be dynamic). Passes when the largest
    |logit difference| is at most ``atol * max(1, largest |logit|)`` and every top-1 class agrees, except
    where PyTorch's own top-2 margin is inside that tolerance (a tie that rounding may break either way).
    The scale factor matters for trained models: fp32 rounding grows with the size of the sums, and ONNX
    Runtime folds BatchNorm into the convolutions, so logits of about 20 differ by ~3e-4 with nothing wrong
    (measured on a BN model), while a real fault (a missing normalization, a wrong layer) differs by ~1.
    Raises :class:`InceptionLabError` otherwise.
    """
    report = compare_with_pytorch(session, model, images, atol)
    if not report.pop("ok"):
        raise InceptionLabError(
            f"ONNX Runtime disagrees with PyTorch: largest logit difference {report['max_abs_logit_diff']:.3g} "
            f"(allowed {report['tolerance']:.3g} = {atol:g} x largest |logit| {report['max_abs_logit']:.3g}), same "
            f"top-1 on {report['same_top1']}/{len(images)} images. "
            "The file was not written (--atol relaxes the check, --no-check skips it)"
        )
    return report


def _data_record(config: TrainConfig) -> dict:
    """What a deployment must know of the run's data to prepare an image as training did (docs/data.md)."""
    info = data_info(config)
    return {"source": info.source, "classes": list(info.classes), "channels": info.channels,
            "stored_size": info.image_size, "color": info.color, "resize": info.resize,
            "background": list(info.background), "fingerprint": info.fingerprint}


def check_images(config: TrainConfig, count: int, data_dir=None, run_dir=None) -> torch.Tensor:
    """The first ``count`` test images of the run's data, preprocessed like training: [0, 1] pixels."""
    test_images = load_run_dataset(config, run_dir, data_dir=data_dir, progress=False, log=None).test_images[:count]
    return resize_batch(test_images, config.image_size)


def _prepare_target(path: Path, force: bool) -> None:
    """Refuse a ``path`` the export may not replace; remove the temporary files killed exports to it left."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force (force=True) to replace it")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name such as {path / 'model.onnx'}")
    with contextlib.suppress(OSError):  # best effort: a directory we cannot list fails the write itself, by name
        remove_leftover_temp_files(path.parent, [path.name])


def export_onnx(
    run_dir: str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    num_check_images: int = 256,
    atol: float = ATOL,
    force: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> dict:
    """Export the run's model to ``path`` as ONNX (see the module doc) and return a report dict.

    With ``check`` (the default) the graph is run in ONNX Runtime on the first ``num_check_images`` real
    test images of the run's data and compared with PyTorch (:func:`check_onnx`) before anything is written.
    ``path`` is written atomically; an existing file is an error unless ``force``. The temporary files that killed
    exports to ``path`` left beside it are removed first.
    """
    argcheck.check(run_dir=(run_dir, PATH), path=(path, PATH), opset=(opset, argcheck.WHOLE), check=(check, FLAG),
                   num_check_images=(num_check_images, whole(1)), atol=(atol, argcheck.number(0)),
                   force=(force, FLAG), data_dir=(data_dir, optional(PATH)))
    path = Path(path)
    _prepare_target(path, force)
    _, ort = require_onnx()
    check_opset(opset)
    sha = runs.weights_sha256(run_dir)  # also refuses a run without weights, before any work
    model, config = runs.load_run_model(run_dir, "cpu")
    model = pixel_model(model, config)
    size, channels = config.image_size, config.in_channels
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    proto = to_onnx_proto(model, example, opset)
    for key, value in metadata_for(config, sha, opset).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"inceptionlab {config.model} at {size}x{size}: {INPUT_NAME} [N,{channels},{size},{size}]"
    payload = proto.SerializeToString()
    report = {
        "run_dir": str(run_dir),
        "onnx": str(path),
        "model": config.model,
        "image_size": size,
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["N", channels, size, size], "dtype": "float32", "range": [0, 1]},
        "output": {"name": OUTPUT_NAME, "shape": ["N", config.num_classes]},
        "normalization_in_graph": normalization(config) is not None,
        "bytes": len(payload),
        "check": None,
    }
    session = ort_session(ort, payload, f"the graph exported at opset {opset}; the file was not written")
    if check:
        report["check"] = check_onnx(session, model, check_images(config, num_check_images, data_dir, run_dir), atol)
    if path.exists() and not force:  # appeared while we exported
        raise ConfigError(f"{path} exists; pass --force (force=True) to replace it")
    atomic_write_with(path, lambda f: f.write(payload))
    return report


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``inceptionlab.*`` metadata props of an ONNX file (keys without the prefix)."""
    onnx, _ = require_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for files that are not ONNX
        raise ONNXMismatchError(f"{path} is not a readable ONNX file ({exc})") from None
    return {p.key[len(META) :]: p.value for p in proto.metadata_props if p.key.startswith(META)}


def _check_metadata(path: Path, run_dir, config: TrainConfig, redo: str) -> None:
    """Refuse a file whose inceptionlab metadata names another model, size or weights than the run's."""
    meta = read_metadata(path)
    if not meta:
        raise ONNXMismatchError(
            f"{path} has no inceptionlab metadata: it was not made by `inceptionlab export`; {redo}"
        )
    expected = {
        "model": config.model,
        "image_size": str(config.image_size),
        "num_classes": str(config.num_classes),
        "in_channels": str(config.in_channels),
    }
    for key, want in expected.items():
        if meta.get(key) != want:
            raise ONNXMismatchError(
                f"{path} belongs to another model: its {key} is {meta.get(key)!r}, the run's is {want!r}; {redo}"
            )
    if meta.get("weights_sha256") != runs.weights_sha256(run_dir):
        raise ONNXMismatchError(
            f"{path} was exported from other weights than {run_dir}/{runs.WEIGHTS} (another run, or an earlier "
            f"state of this one); {redo}"
        )


def probe_images(config: TrainConfig, count: int = PROBES) -> torch.Tensor:
    """``count`` seeded [0, 1] images at the run's size: the same every time, so a check is reproducible."""
    size, channels = config.image_size, config.in_channels
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(0))


def open_session(path: str | os.PathLike, *, run_dir: str | os.PathLike, config: TrainConfig | None = None):
    """An ONNX Runtime session for ``path``, refused unless it was exported from ``run_dir``'s weights.

    Checks the metadata (model, image size, classes, SHA-256 of the weights) and the input shape, then the
    behaviour: metadata is plain text anyone can copy onto another graph, so the session must also give the
    run's PyTorch logits on :data:`PROBES` seeded images (within :data:`ATOL`, as :func:`check_onnx`).
    """
    _, ort = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise ONNXMismatchError(
            f"{path}: no such ONNX file; make one with `inceptionlab export {run_dir} --onnx {path}`"
        )
    config = config if config is not None else runs.read_run_config(run_dir)
    redo = f"re-export it with `inceptionlab export {run_dir} --onnx {path} --force`"
    _check_metadata(path, run_dir, config, redo)
    session = ort_session(ort, str(path), path)
    size, channels = config.image_size, config.in_channels
    shape = list(session.get_inputs()[0].shape)
    if len(shape) != 4 or shape[1:] != [channels, size, size]:
        raise ONNXMismatchError(f"{path} takes input {shape}, the run needs [N, {channels}, {size}, {size}]; {redo}")
    model, _ = runs.load_run_model(run_dir, "cpu")
    report = compare_with_pytorch(session, pixel_model(model, config), probe_images(config))
    if not report["ok"]:
        raise ONNXMismatchError(
            f"{path} computes other logits than {run_dir}'s model although its metadata names these weights "
            f"(largest difference {report['max_abs_logit_diff']:.3g}, allowed {report['tolerance']:.3g}, on "
            f"{PROBES} seeded images): the file was altered; {redo}"
        )
    return session


def session_logits(session, images: torch.Tensor) -> torch.Tensor:
    """Logits (float32, CPU) of an ONNX Runtime session for float32 ``[N, C, S, S]`` pixels."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)}
    try:
        out = session.run(None, feed)[0]
    except Exception as exc:  # onnxruntime's own exception types: a graph that does not take our images
        raise ONNXMismatchError(f"ONNX Runtime could not run the graph ({str(exc).splitlines()[0]})") from None
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def onnx_logits(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Logits of an exported file for float32 ``[N, C, S, S]`` pixels, with ONNX Runtime only (no checks)."""
    _, ort = require_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]
