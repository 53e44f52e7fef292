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


# --------------------------------------------------------------------------------------------- standard output


@pytest.fixture(scope="module")
def output_case(tmp_path_factory, fmnist):
    """Untrained runs (the checks are about output, not accuracy): lenet for evaluate and predict, googlenet-lite
    (Inception blocks) for inspect; an image to predict; a shared verification cache for the data commands."""
    import json

    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from inceptionlab.models import create_model

    base = tmp_path_factory.mktemp("output")
    for name in ("lenet", "googlenet-lite"):
        torch.manual_seed(0)
        run_dir = base / name
        run_dir.mkdir()
        state = {k: v.contiguous() for k, v in create_model(name).state_dict().items()}
        save_file(state, run_dir / "model.safetensors", metadata={"model": name, "image_size": "28"})
        (run_dir / "config.json").write_text(json.dumps({"model": name, "image_size": 28, "device": "cpu"}))
    Image.fromarray(fmnist.test_images[0, 0].numpy()).save(base / "item.png")
    # block-buffered stdout, as a user has it (a write may fail only at the final flush)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(XDG_CACHE_HOME=str(base / "cache"), OMP_NUM_THREADS="1")
    return base, env


def output_commands(base):
    return {
        "models": ["models"],
        "data": ["data", "--json", "--no-download"],
        "evaluate": ["evaluate", str(base / "lenet"), "--json", "--device", "cpu"],
        "predict": ["predict", str(base / "lenet"), str(base / "item.png")],
        "inspect": ["inspect", str(base / "googlenet-lite"), "--json", "--device", "cpu", "--limit-test", "20",
                    "--blocks", "b3.0", "--errors", "2", "--out", str(base / "inspect-out")],
    }


@pytest.mark.parametrize("where", ["a full disk", "a closed pipe"])
@pytest.mark.parametrize("name", ["models", "data", "evaluate", "predict", "inspect", "models unbuffered"])
def test_output_that_cannot_be_written_is_one_line_and_exit_1(output_case, name, where):
    """`... > /dev/full` (the kernel's ENOSPC) and `... | head` with the reader gone (EPIPE) used to end in a
    traceback: now one line on stderr naming standard output, exit 1, whichever command printed, whether the
    failure comes at a write (unbuffered) or at the final flush."""
    base, env = output_case
    name, _, buffering = name.partition(" ")
    env = {**env, "PYTHONUNBUFFERED": "1"} if buffering else env
    if where == "a full disk":
        stdout = os.open("/dev/full", os.O_WRONLY)
    else:
        read_end, stdout = os.pipe()
        os.close(read_end)  # the reader is gone before the first byte is written
    try:
        res = subprocess.run([sys.executable, "-m", "inceptionlab", *output_commands(base)[name]], stdout=stdout,
                             stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    finally:
        os.close(stdout)
    why = "No space left on device" if where == "a full disk" else "Broken pipe"
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"inceptionlab {name}: error: ") and "standard output" in res.stderr, res.stderr
    assert why in res.stderr, res.stderr

@pytest.mark.parametrize("readme", ["README.md", "README.ko.md"])
def test_the_readmes_command_tables_list_every_command(readme):
    """README.ko.md once lacked the inspect row: both tables must name exactly the commands the parser has."""
    import re
    from pathlib import Path

    from inceptionlab.cli import build_parser

    text = (Path(__file__).parent.parent / readme).read_text()
    listed = re.findall(r"^\| `inceptionlab ([a-z-]+)", text, flags=re.M)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert sorted(listed) == sorted(commands)
