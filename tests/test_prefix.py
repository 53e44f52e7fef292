"""inceptionlab.prefix: the steps are the model's forward, and an ablation computed from the prefix cache (only the
steps from the first ablated block on) equals the whole network run with the blocks' forward replaced, and, for
zero ablation, the block's output with the branch's channels zeroed by a forward hook (the chapter's table)."""

import functools

import pytest
import torch

from inceptionlab.errors import InceptionLabError
from inceptionlab.inspect import replaced_forwards
from inceptionlab.models import create_model
from inceptionlab.prefix import PrefixCache, ablated_forward, block_steps, forward_steps, replacement, run_steps

SIZES = {"googlenet": 32, "googlenet-bn": 32, "googlenet-paper": 32, "inception-v3": 75, "inception-resnet": 75}


def model_and_batch(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(name).eval()
    return model, torch.rand(3, 1, SIZES[name], SIZES[name])


@pytest.mark.parametrize("name", list(SIZES))
def test_steps_are_the_forward_and_cached_ablation_is_the_whole_network_one(name):
    model, x = model_and_batch(name)
    steps = forward_steps(model)
    blocks = block_steps(steps)
    with torch.inference_mode():
        assert torch.equal(run_steps(steps, x), model(x))
        cache = PrefixCache(steps, x)
        assert torch.equal(cache.base, model(x))
        names = list(blocks)
        off = {names[1]: {0: replacement("zero")}, names[-2]: {1: replacement("zero"), 2: replacement("zero")}}
        forwards = {dict(steps)[n]: functools.partial(ablated_forward, dict(steps)[n], r) for n, r in off.items()}
        with replaced_forwards(forwards):
            expected = model(x)
        got = cache.logits({blocks[n]: r for n, r in off.items()})
    assert not torch.equal(got, cache.base)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_zeroed_branches_equal_zeroed_channels_of_the_block_output():
    model, x = model_and_batch("googlenet", seed=1)
    steps = forward_steps(model)
    hooks = [model.b3[0].register_forward_hook(lambda _m, _a, out: out.index_fill(1, torch.arange(64, 192), 0)),
             model.b4[1].register_forward_hook(lambda _m, _a, out: out.index_fill(1, torch.arange(0, 160), 0))]
    with torch.inference_mode():
        expected = model(x)
        for hook in hooks:
            hook.remove()
        cache = PrefixCache(steps, x)
        blocks = block_steps(steps)
        got = cache.logits({blocks["b3.0"]: {1: replacement("zero")}, blocks["b4.1"]: {0: replacement("zero")}})
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_model_whose_blocks_the_steps_miss_is_refused():
    model = create_model("googlenet")
    model.stage_names = ("b1", "b2", "head")
    with pytest.raises(InceptionLabError, match="not a list of stages reaching every multi-branch block"):
        forward_steps(model)
    assert block_steps(forward_steps(create_model("lenet"))) == {}
