"""Writes notebooks/googlenet.ipynb (outputs stripped) from the cells below: edit here, run, commit both.

    python notebooks/build_notebook.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# GoogLeNet, the chapter in one notebook

This notebook follows d2l's chapter *Multi-Branch Networks (GoogLeNet)* with the `inceptionlab` library: the
Inception block, the model and its shapes, training with live curves, the confusion matrix, predictions, and each
exercise of the chapter answered by running it. Everything here is the library's public API; the command line
does the same (`inceptionlab --help`)."""),
    ("code", """# Parameters. SMOKE = True trains for seconds (the test suite runs the notebook that way).
SMOKE = False"""),
    ("code", """import torch

from inceptionlab import create_model, list_models
from inceptionlab.analysis import cost_table, input_size_report, stage_shapes
from inceptionlab.config import preset_config

budget = dict(limit_train=128, limit_test=128, epochs=1, image_size=28, num_threads=1) if SMOKE else {}
print("models:", ", ".join(list_models()))
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")"""),
    ("md", """## The Inception block

Four branches read the same input: a 1×1 convolution; 1×1 then 3×3; 1×1 then 5×5; 3×3 max-pooling then 1×1.
Their outputs are concatenated on the channel axis. Here is the first block of stage b3 and what each branch
makes of a 192-channel 12×12 input."""),
    ("code", """block = create_model("googlenet").b3[0]
print(block)
x = torch.randn(1, 192, 12, 12)
with torch.no_grad():
    outputs = [branch(x) for branch in block.parallel_branches()]
for name, out in zip(["1x1", "1x1 -> 3x3", "1x1 -> 5x5", "pool -> 1x1"], outputs, strict=True):
    print(f"{name:<12} {tuple(out.shape)}")
print("concatenated", tuple(block(x).shape))"""),
    ("md", """## The model, block by block

The chapter's shape walk-through for one 1×96×96 image:"""),
    ("code", """for stage in stage_shapes("googlenet", 96):
    print(f"{stage.name:<5} {str(stage.shape):<16} {stage.params:>10,}")
print("total", f"{sum(s.params for s in stage_shapes('googlenet', 96)):,}", "parameters")"""),
    ("md", """## Training

On a GPU this is the chapter's recipe (lr 0.1, batch 128, 10 epochs, 96×96); on a CPU the `quick` preset
(googlenet-lite, a half-width Inception-BN for 28×28, 4 epochs: about 0.92 in 5 minutes on 2 cores). The curves
below update while it trains."""),
    ("code", """from inceptionlab.train import train

preset = "d2l" if torch.cuda.is_available() else "quick"
config = preset_config(preset, **budget)
result = train(config)
print(result.run_dir, f"test acc {result.summary['test_acc']:.3f}")"""),
    ("md", "## Where it errs: the confusion matrix"),
    ("code", """from IPython.display import Image

Image(filename=str(result.run_dir / "confusion.png"), width=480)"""),
    ("md", "## Predictions on test images"),
    ("code", """from inceptionlab.data import load_fashion_mnist, resize_batch
from inceptionlab.inputs import class_names
from inceptionlab.plots import new_figure, png_bytes
from inceptionlab.predict import load_predictor, predict

data = load_fashion_mnist()
model, run_config = load_predictor(result.run_dir)
names = class_names(run_config)  # the run remembers its data's classes
images, labels = data.test_images[:12], data.test_labels[:12]
predictions = predict(model, resize_batch(images, run_config.image_size), names=names)
fig, _ = new_figure((9, 3.2), dpi=90)
fig.clear()
for i, (image, label, p) in enumerate(zip(images, labels, predictions, strict=True)):
    ax = fig.add_subplot(2, 6, i + 1)
    ax.imshow(image[0], cmap="gray")
    ax.set_axis_off()
    right = p.classes[0] == int(label)
    ax.set_title(f"{p.names[0]}\\n(true: {names[int(label)]})", fontsize=7, color="black" if right else "red")
fig.tight_layout()
Image(data=png_bytes(fig))"""),
    ("md", """## Your own images

Point `data=` at a folder with one sub-folder per class (or `train/`, `val/`, `test/` folders of class folders, or
a CSV of `path,label`): every image is decoded once into a cache, split per class with a fixed seed, and the run
remembers its classes, channels and statistics (`docs/data.md`). Here a folder is made from Fashion-MNIST itself so
that the cell runs anywhere; put your own path instead."""),
    ("code", """import tempfile
from pathlib import Path

from inceptionlab.data.export import export_folder
from inceptionlab.runs import read_run_config

folder = Path(tempfile.mkdtemp()) / "my-images"
export_folder(data, folder, limit_train=128 if SMOKE else 3000, limit_test=64 if SMOKE else 500)
own_budget = {**budget, "limit_train": None, "limit_test": None} if SMOKE else dict(epochs=2)
own = train(preset_config("quick", data=str(folder), **own_budget))
classes = class_names(read_run_config(own.run_dir))  # the run remembers the folder's classes
print(own.run_dir, f"test acc {own.summary['test_acc']:.3f}", "classes:", ", ".join(classes))"""),
    ("md", """## The exercises

**1. Batch normalization.** `googlenet-bn` puts BatchNorm after every convolution. Same budget, both models:"""),
    ("code", """from inceptionlab.experiments import compare

short = dict(epochs=1, limit_train=2048, limit_test=1000, image_size=28) if not SMOKE else budget
table = compare(["googlenet", "googlenet-bn"], preset_config("quick", **short), log=None)
for row in table.rows:
    print(f"{row.label:<14} test acc {row.test_acc_mean:.3f}")"""),
    ("md", """**2. Inception-v3 blocks** factorize the 5×5 into two 3×3 and n×n into 1×n + n×1:"""),
    ("code", """for name in ("googlenet", "inception-v3"):
    cost = [c for c in cost_table(96) if c.model == name][0]
    print(f"{name:<14} {cost.params:>11,} parameters  {cost.gflops_natural:.2f} GFLOP at {cost.natural_size} px")"""),
    ("md", """**3. Label smoothing** trains against 0.9 on the true class and 0.1 spread over the rest:"""),
    ("code", """smooth = compare(["googlenet-bn"], preset_config("quick", label_smoothing=0.1, **short), log=None)
print(f"label smoothing 0.1: test acc {smooth.rows[0].test_acc_mean:.3f} "
      f"(without: {table.rows[1].test_acc_mean:.3f})")"""),
    ("md", """**4. Residual connections**: Inception-ResNet adds each block's branches back onto its input:"""),
    ("code", """for stage in stage_shapes("inception-resnet", 96):
    print(f"{stage.name:<9} {str(stage.shape):<16} {stage.params:>10,}")"""),
    ("md", """**5. The minimum image size** follows from the strides and paddings of every layer:"""),
    ("code", """for name in ("googlenet", "googlenet-bn", "inception-v3"):
    report = input_size_report(name, verify=False)
    print(f"{name:<14} accepts {report.describe()}")"""),
    ("md", """**6. Parameters against AlexNet, VGG and NiN**: global average pooling removes the big fully connected
layers."""),
    ("code", """for cost in cost_table():
    if cost.model in ("alexnet", "vgg11", "nin", "googlenet"):
        print(f"{cost.model:<10} {cost.params:>13,} parameters, {100 * cost.fc_params / cost.params:5.1f} % in FC")"""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


if __name__ == "__main__":
    nbformat.write(build(), Path(__file__).with_name("googlenet.ipynb"))
