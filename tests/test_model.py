import pytest
import torch

from unet.network.model import DoubleConv, UNet


def test_any_input_size_gives_logits_of_the_same_size():
    model = UNet(in_channels=3, out_channels=1, features=(4, 8, 16, 32)).eval()
    x = torch.randn(2, 3, 161, 243)          # odd sizes: every level loses a row or column
    assert model(x).shape == (2, 1, 161, 243)


def test_out_channels_and_min_size():
    model = UNet(out_channels=3, features=(4, 8)).eval()
    assert model.min_size == 4
    assert model(torch.randn(1, 3, 4, 6)).shape == (1, 3, 4, 6)


def test_architecture_follows_the_paper():
    features = (64, 128, 256, 512)
    model = UNet(features=features)
    assert [d[0].in_channels for d in model.downs] == [3, 64, 128, 256]
    assert [d[0].out_channels for d in model.downs] == list(features)
    # The bridge widens the deepest level: 512 -> 1024 (not features[1] -> 1024).
    assert (model.bridge[0].in_channels, model.bridge[0].out_channels) == (512, 1024)
    assert [(u.up.in_channels, u.up.out_channels) for u in model.ups] == \
        [(1024, 512), (512, 256), (256, 128), (128, 64)]
    assert [u.conv[0].in_channels for u in model.ups] == [1024, 512, 256, 128]
    assert model.head.kernel_size == (1, 1) and model.head.in_channels == 64
    # The classic U-Net with batch norm: 31,037,633 parameters.
    assert sum(p.numel() for p in model.parameters()) == 31_037_633


def test_double_conv_has_no_conv_bias_and_two_bn_relu():
    block = DoubleConv(3, 8)
    kinds = [type(m).__name__ for m in block]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    assert block[0].bias is None and block[3].bias is None
    assert block[0].kernel_size == (3, 3)


def test_input_smaller_than_the_depth_fails():
    model = UNet(features=(4, 8, 16, 32)).eval()
    with pytest.raises(ValueError, match=r"input 8x8: smaller than 16x16, the least this "
                                         r"4-level U-Net accepts"):
        model(torch.randn(1, 3, 8, 8))
