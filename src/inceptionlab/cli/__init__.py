"""``inceptionlab`` command line: a thin layer over the library.

Each module in ``COMMAND_MODULES`` owns a group of subcommands and exposes ``register(subparsers)``, which
adds its parsers and sets ``func(args) -> int`` on each. Errors a user can act on are
:class:`~inceptionlab.errors.InceptionLabError`; they are printed without a traceback (exit code 1).
Usage errors (bad option values) are argparse's: a usage message and exit code 2. Standard output that cannot
be written (a full disk, a pipe closed early as by ``| head``) is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import importlib
import os
import sys
import threading
from typing import NoReturn

from inceptionlab import __version__
from inceptionlab.errors import InceptionLabError

COMMAND_MODULES = ("analysis", "data", "train", "deploy", "experiments", "inspect", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inceptionlab",
        description="GoogLeNet and the Inception family on Fashion-MNIST or your own images (d2l chapter 8.4 and "
        "beyond).",
    )
    parser.add_argument("--version", action="version", version=f"inceptionlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


class StdoutError(Exception):
    """Standard output could not take what a command printed; told apart from the command's own OSErrors."""

    def __init__(self, cause: OSError):
        super().__init__(cause)
        self.cause = cause

    def __str__(self) -> str:
        why = os.strerror(self.cause.errno) if self.cause.errno else str(self.cause)
        if self.cause.errno == errno.EPIPE:
            return f"standard output was closed before all was written ({why}): the reading command ended early"
        return f"cannot write to standard output ({why}); the output is incomplete: free space or redirect it elsewhere"


class _GuardedStdout:
    """``sys.stdout`` while a command runs: a failed write or flush raises :class:`StdoutError`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise StdoutError(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutError(exc) from exc

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    stdout, sys.stdout = sys.stdout, _GuardedStdout(sys.stdout)
    command = "inceptionlab"
    try:
        try:
            args = build_parser().parse_args(argv)
            command = f"inceptionlab {args.command}"
            return run_command(args)
        finally:
            sys.stdout.flush()  # here, not at exit: a full disk or a closed pipe must still be one line and exit 1
    except StdoutError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        _discard(stdout)
        return 1
    finally:
        sys.stdout = stdout


def _discard(stream) -> None:
    """Point the file descriptor under ``stream`` at /dev/null, so that flushing what is left at exit succeeds (the
    recipe of Python's `signal` documentation for a closed pipe)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (a test's captured stream): nothing to flush to
        pass


def run_command(args: argparse.Namespace) -> int:
    """``args.func``, with the errors a user can act on as one line on stderr."""
    try:
        return int(args.func(args) or 0)
    except InceptionLabError as exc:
        print(f"inceptionlab {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"inceptionlab {args.command}: interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's final teardown of every loaded module.

    That teardown is all a finished command has left to do, and with torch loaded it is slow: 0.7 s after
    ``import torch`` on the 2-core CPU (two other one-thread jobs on it), 1.4 s once ``torch._dynamo`` is loaded,
    which every optimizer does (docs/training.md). What a normal exit does that matters still happens: other
    (non-daemon) threads are waited for, :mod:`atexit` handlers run, stdout and stderr are flushed. Our files are
    complete by then (each is written and closed atomically). ``INCEPTIONLAB_NORMAL_EXIT=1`` keeps the normal
    exit (e.g. for tools that report at interpreter teardown).
    """
    if os.environ.get("INCEPTIONLAB_NORMAL_EXIT", "") not in ("", "0"):
        sys.exit(code)
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what the interpreter runs at exit (logging.shutdown, tempfile cleanups, ...)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing left to deliver
            pass
    os._exit(code)


def run() -> NoReturn:
    """The ``inceptionlab`` console command: :func:`main`, then :func:`exit_now` (also after argparse's exits:
    ``--help``, ``--version``, usage errors)."""
    try:
        code = main()
    except SystemExit as exc:
        if not (exc.code is None or isinstance(exc.code, int)):
            raise  # a message as the exit status: Python prints it
        code = exc.code or 0
    exit_now(code)
