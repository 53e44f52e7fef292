import torch

from inceptionlab.models import create_model
from inceptionlab.models.googlenet import load_chapter_state_dict, to_chapter_state_dict


def test_chapter_parameter_count():
    model = create_model("googlenet")
    assert sum(p.numel() for p in model.parameters()) == 5_977_530


def test_chapter_stage_shapes_at_96():
    model = create_model("googlenet").eval()
    x = torch.zeros(1, 1, 96, 96)
    expected = {"b1": (64, 24, 24), "b2": (192, 12, 12), "b3": (480, 6, 6), "b4": (832, 3, 3), "b5": (1024,)}
    for stage, shape in expected.items():
        x = getattr(model, stage)(x)
        assert tuple(x.shape[1:]) == shape, stage
    assert model.head(x).shape == (1, 10)


def test_chapter_state_dict_round_trip():
    torch.manual_seed(0)
    source = create_model("googlenet").eval()
    chapter = to_chapter_state_dict(source)
    assert "net.0.0.weight" in chapter and "net.5.weight" in chapter
    # d2l 0.17 notebook layout: no "net." prefix and branches named p1_1, p2_1, ...
    old_layout = {k.removeprefix("net.").replace(".b1_1.", ".p1_1.").replace(".b3_2.", ".p3_2."): v
                  for k, v in chapter.items()}
    x = torch.rand(2, 1, 96, 96)
    for state in (chapter, old_layout):
        target = create_model("googlenet").eval()
        load_chapter_state_dict(target, state)
        torch.testing.assert_close(target(x), source(x))
