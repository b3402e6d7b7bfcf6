"""The classifier nets: shapes, stage counts, argument checks, recorded constructor arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_curate.classifiers import MLPClassifier, RebuildableNet, SmallCNN


# -- nets -----------------------------------------------------------------------
@pytest.mark.parametrize("channels,size,width,expected_features", [(1, 8, 32, 64), (3, 32, 16, 128), (3, 32, 8, 64)])
def test_small_cnn_shapes_and_features(channels, size, width, expected_features):
    torch.manual_seed(0)
    net = SmallCNN(in_channels=channels, num_classes=10, width=width, image_size=size).eval()
    x = torch.rand(5, channels, size, size) * 2 - 1
    logits, feats = net(x), net.features(x)
    assert logits.shape == (5, 10) and feats.shape == (5, expected_features) == (5, net.num_features)
    # The head is one linear map of the features (dropout is off in eval mode).
    torch.testing.assert_close(logits, net.head[1](feats))
    with pytest.raises(ValueError, match=rf"\[n, {channels}, H, W\]"):
        net(torch.zeros(2, channels + 1, size, size))


def test_small_cnn_stage_count_follows_image_size():
    pools = lambda net: sum(isinstance(m, nn.MaxPool2d) for m in net.modules())  # noqa: E731
    assert pools(SmallCNN(image_size=8)) == 2  # 8 -> 4 -> 2
    assert pools(SmallCNN(image_size=32, in_channels=3)) == 4  # 32 -> 16 -> 8 -> 4 -> 2
    assert pools(SmallCNN(image_size=28)) == 2  # 28 -> 14 -> 7
    with pytest.raises(ValueError, match="num_classes"):
        SmallCNN(num_classes=1)


def test_mlp_classifier_shapes_and_input_check():
    net = MLPClassifier(in_features=64, num_classes=10, hidden=32, depth=3).eval()
    x = torch.randn(4, 1, 8, 8)
    assert net(x).shape == (4, 10) and net.features(x).shape == (4, 32) and net.num_features == 32
    with pytest.raises(ValueError, match="64 values per sample"):
        net(torch.randn(4, 3, 8, 8))


def test_nets_record_their_constructor_arguments():
    assert SmallCNN(width=8).init_args == {"in_channels": 1, "num_classes": 10, "width": 8, "image_size": 8,
                                           "dropout": 0.1}
    assert MLPClassifier(10, 3, hidden=16).init_args == {"in_features": 10, "num_classes": 3, "hidden": 16,
                                                         "depth": 2, "dropout": 0.0}

    class Wider(SmallCNN):  # a subclass with its own signature records its own arguments
        def __init__(self, factor: int = 2, **kwargs):
            super().__init__(width=8 * factor, **kwargs)

    assert Wider(factor=3, num_classes=4).init_args == {"factor": 3, "num_classes": 4}

    class Holder(RebuildableNet):  # a non-plain argument: not rebuildable from the file alone
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

    assert Holder(nn.Linear(2, 2)).init_args is None
