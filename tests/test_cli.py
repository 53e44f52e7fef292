"""The console entry point's exit: what a normal interpreter exit does that matters, without its module teardown."""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import atexit, pathlib, sys, threading, time
from inceptionlab.cli import exit_now

marker = pathlib.Path(sys.argv[1])
atexit.register(lambda: print(" atexit ran"))

def later():
    time.sleep(0.3)
    marker.write_text("thread finished")

threading.Thread(target=later).start()  # not a daemon: a normal exit waits for it
print("still buffered", end="")  # stdout is a pipe, so this sits in the buffer until something flushes it
exit_now(3)
"""


@pytest.mark.parametrize("normal_exit", ["0", "1"])
def test_exit_now_waits_for_threads_runs_atexit_and_flushes(tmp_path, normal_exit):
    marker = tmp_path / "marker"
    env = {**os.environ, "INCEPTIONLAB_NORMAL_EXIT": normal_exit}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(marker)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 3, res.stderr
    assert res.stdout == "still buffered atexit ran\n"
    assert marker.read_text() == "thread finished"


def test_console_command_exit_codes(tmp_path):
    """`python -m inceptionlab` goes through the same exit: an error a user can act on is exit 1 with its message."""
    res = subprocess.run([sys.executable, "-m", "inceptionlab", "train", "--resume", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("inceptionlab train: error:") and "nowhere" in res.stderr


@pytest.mark.parametrize(("args", "code", "stream", "text"), [
    (["--version"], 0, "stdout", "inceptionlab "),
    (["train", "--lr", "0"], 2, "stderr", "--lr"),
])
def test_argparse_exits_keep_their_status_and_output(args, code, stream, text):
    res = subprocess.run([sys.executable, "-m", "inceptionlab", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == code
    assert text in getattr(res, stream)


def test_help_and_version_do_not_import_torch():
    """`inceptionlab --help` / `--version` answer at once: building the parser must not import torch (~1 s)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from inceptionlab.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'], ['predict', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "inceptionlab 0.1.0" in res.stdout and "usage: inceptionlab" in res.stdout
    assert res.stderr.strip().splitlines()[-1] == "[]"
