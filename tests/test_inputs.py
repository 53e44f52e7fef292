"""inceptionlab.inputs: the criterion and the one forward-and-loss function, against PyTorch's functional
cross-entropy on real Fashion-MNIST images (the model's input statistics computed here from the training split)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inceptionlab.config import TrainConfig
from inceptionlab.inputs import forward_loss, make_criterion
from inceptionlab.models import create_model, init_xavier_


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_criterion_is_functional_cross_entropy_with_the_configs_smoothing(fmnist, smoothing):
    torch.manual_seed(0)
    logits, y = 3 * torch.randn(64, 10), fmnist.train_labels[:64]
    got = make_criterion(TrainConfig(label_smoothing=smoothing))(logits, y)
    assert torch.equal(got, F.cross_entropy(logits, y, label_smoothing=smoothing))
    other = F.cross_entropy(logits, y, label_smoothing=0.2 if smoothing != 0.2 else 0.0)
    assert abs(float(got - other)) > 1e-3  # the smoothing changes this loss: the comparison can tell


@pytest.mark.parametrize("normalize", [False, True])
def test_forward_loss_is_cross_entropy_of_the_models_logits(fmnist, normalize):
    config = TrainConfig(model="lenet", image_size=28, label_smoothing=0.1, normalize=normalize, precision="fp32")
    torch.manual_seed(0)
    model = init_xavier_(create_model("lenet")).double()
    x, y = fmnist.test_images[:32].double().unsqueeze(1) / 255, fmnist.test_labels[:32]
    loss, logits = forward_loss(model, x, y, make_criterion(config), config)
    if normalize:  # d2l feeds [0, 1]; normalize=True standardises with the training split's statistics
        pixels = fmnist.train_images.double() / 255
        x = (x - pixels.mean()) / pixels.std()
    with torch.no_grad():
        expected_logits = model(x)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, F.cross_entropy(expected_logits, y, label_smoothing=0.1), rtol=0, atol=1e-6)
    assert forward_loss(model, x, y, None, config)[0] is None  # evaluation: logits only


def test_forward_loss_adds_the_aux_losses_with_the_given_weight(fmnist):
    """googlenet-paper in training mode: the main loss plus ``aux_weight`` x each auxiliary head's loss."""
    config = TrainConfig(model="googlenet-paper", image_size=32, label_smoothing=0.2, precision="fp32")
    torch.manual_seed(0)
    model = create_model("googlenet-paper").double().train()
    x = F.interpolate(fmnist.test_images[:4].double().unsqueeze(1) / 255, size=32)
    y = fmnist.test_labels[:4]
    torch.manual_seed(1)
    loss, logits = forward_loss(model, x, y, make_criterion(config), config, aux_weight=0.5)
    torch.manual_seed(1)  # the same dropout masks
    main, (aux1, aux2) = model(x)
    ce = [F.cross_entropy(out, y, label_smoothing=0.2) for out in (main, aux1, aux2)]
    torch.testing.assert_close(loss, ce[0] + 0.5 * (ce[1] + ce[2]), rtol=0, atol=1e-9)
    torch.testing.assert_close(logits, main, rtol=0, atol=0)
    torch.manual_seed(1)
    default, _ = forward_loss(model, x, y, make_criterion(config), config)
    torch.testing.assert_close(default, ce[0] + 0.3 * (ce[1] + ce[2]), rtol=0, atol=1e-9)  # the paper's 0.3
