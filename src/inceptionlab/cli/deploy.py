"""`inceptionlab export` (run -> ONNX, checked in ONNX Runtime) and `inceptionlab predict` (classify image files)."""

from __future__ import annotations

import sys
from pathlib import Path

from inceptionlab.cli._args import positive_float, positive_int, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained run to ONNX and check it in ONNX Runtime",
        description="Export RUN_DIR's model to ONNX (input 'images' float32 [N,1,S,S] pixels in [0,1], output "
        "'logits'; normalization inside the graph), check it against PyTorch on real test images of the run's data, "
        "then write it atomically. See docs/deploy.md.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--onnx", type=Path, metavar="PATH", help="output file (default: RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset, 7 or above (default 18; below 18 "
                   "uses the older TorchScript exporter; ONNX Runtime cannot run our graphs below 7)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the ONNX Runtime vs PyTorch check (needs no dataset)")
    p.add_argument("--check-images", type=positive_int, default=256, metavar="N",
                   help="test images of the run's data to compare on (default 256)")
    p.add_argument("--atol", type=positive_float, default=None, metavar="TOL",
                   help="allowed |logit difference| per unit of the largest |logit| (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="directory with the Fashion-MNIST files (a run trained on them)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "predict",
        help="classify image files with a trained run",
        description="Classify images (PNG, JPEG, ...; colour or grey; any size) the way training inputs were "
        "made: grey, light item on dark background, 28x28 then the run's size. See docs/deploy.md.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K", help="classes to show (default 3)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--invert", dest="invert", action="store_const", const=True,
                      help="the images are dark-on-light (e.g. a garment on white): invert them")
    mode.add_argument("--no-invert", dest="invert", action="store_const", const=False,
                      help="the images are light-on-dark like Fashion-MNIST: keep them")
    mode.add_argument("--auto-invert", dest="invert", action="store_const", const="auto",
                      help="invert when the border is bright, or for a transparent cut-out when its edge is (the "
                      "default)")
    p.set_defaults(invert="auto")
    p.add_argument("--onnx", type=Path, metavar="PATH", help="predict with this exported file in ONNX Runtime "
                   "(checked first: its metadata and its logits on 4 seeded images must match the run's model)")
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu, cuda, cuda:N, mps or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=cmd_predict)


def cmd_export(args) -> int:
    from inceptionlab.deploy.onnx import ATOL, DEFAULT_OPSET, export_onnx

    path = args.onnx if args.onnx is not None else args.run_dir / "model.onnx"
    report = export_onnx(
        args.run_dir, path, opset=args.opset or DEFAULT_OPSET, check=args.check,
        num_check_images=args.check_images, atol=args.atol or ATOL, force=args.force, data_dir=args.data_dir,
    )
    if args.json:
        print_json(report)
        return 0
    print(f"wrote {report['onnx']} ({report['bytes'] / 1e6:.1f} MB, opset {report['opset']})")
    print(f"input  {report['input']['name']}: float32 {report['input']['shape']}, pixels in [0, 1]"
          + (", normalization inside the graph" if report["normalization_in_graph"] else ""))
    print(f"output {report['output']['name']}: float32 {report['output']['shape']}")
    check = report["check"]
    if check:
        print(f"check: ONNX Runtime vs PyTorch on {check['images']} test images of the run's data: largest logit "
              f"difference {check['max_abs_logit_diff']:.2g} (<= {check['tolerance']:.2g}), same top-1 on "
              f"{check['same_top1']}/{check['images']}")
    else:
        print("check: skipped (--no-check)")
    return 0


def cmd_predict(args) -> int:
    import torch

    from inceptionlab.deploy.predict import ImageError, load_predictor, load_run_image, predict
    from inceptionlab.inputs import class_names

    predictor, config = load_predictor(args.run_dir, args.onnx, args.device)
    loaded, results, failed = [], [], 0
    for path in args.images:
        try:
            pixels, inverted = load_run_image(path, config, args.invert)
        except ImageError as exc:
            # one bad file must not cost the user the others: report it, carry on, exit 1 at the end
            print(f"inceptionlab predict: error: {exc}", file=sys.stderr)
            results.append({"path": str(path), "error": str(exc)})
            failed += 1
            continue
        loaded.append((len(results), pixels))
        results.append({"path": str(path), "inverted": inverted})
    if loaded:
        predictions = predict(predictor, torch.stack([p for _, p in loaded]), args.top_k, class_names(config))
        for (index, _), prediction in zip(loaded, predictions, strict=True):
            results[index].update(prediction.to_dict())
    if args.json:
        print_json({"run_dir": str(args.run_dir), "backend": "onnxruntime" if args.onnx else "pytorch",
                    "predictions": results})
    else:
        for result in results:
            if "top_k" in result:
                top = "  ".join(f"{t['name']} {100 * t['probability']:.1f}%" for t in result["top_k"])
                print(f"{result['path']}: {top}" + ("  (inverted)" if result["inverted"] else ""))
    return 1 if failed else 0
