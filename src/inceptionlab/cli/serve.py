"""``inceptionlab serve RUN_DIR``: the explorer page for a run (a thin layer over :mod:`inceptionlab.explore`)."""

from __future__ import annotations

import argparse
import sys

from inceptionlab.cli._args import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="an offline page to explore a run: branch knockouts, block anatomy, input sizes, curves, confusion",
        description="Serve one page (no CDN, no telemetry) on 127.0.0.1 for a run of a model with Inception "
        "blocks: predictions with branches knocked out, block anatomy, input sizes, curves, the confusion matrix "
        "and each branch's most activating test images. Ctrl-C stops it. See docs/explorer.md.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0: any free port")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1: this machine only; anything else is "
                   "reachable by others on the network and prints a warning)")
    p.add_argument("--subset", type=positive_int, default=500, metavar="N",
                   help="test images for the confusion matrix, branch means and top images (default 500)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="torch threads (default 1: one image at a time gains little from more, and on a busy "
                   "machine spinning threads made a toggle 40x slower, docs/explorer.md)")
    p.add_argument("--data-dir")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="cpu")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from inceptionlab.explore.model import Explorer
    from inceptionlab.explore.server import LOOPBACK, ExplorerServer

    torch.set_num_threads(args.threads)

    if not 0 <= args.port <= 65535:
        raise SystemExit(f"inceptionlab serve: error: --port {args.port} is not a port (0..65535)")
    explorer = Explorer(args.run_dir, data_dir=args.data_dir, device=args.device, subset=args.subset)
    server = ExplorerServer(explorer, args.host, args.port)
    if args.host not in LOOPBACK:
        print(f"inceptionlab serve: warning: listening on {args.host}: anyone who can reach this address can use "
              "the page and run the model; the default 127.0.0.1 keeps it to this machine", file=sys.stderr)
    print(f"serving {args.run_dir} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0
