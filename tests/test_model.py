import pytest
import torch
import torchvision

from mtcsnn.models import SiameseResNet


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_output_shapes(backbone, stem):
    net = SiameseResNet(backbone=backbone, stem=stem).eval()
    with torch.no_grad():
        out_a, out_b = net.forward_pair(torch.rand(3, 3, 28, 28), torch.rand(3, 3, 28, 28))
    for out in (out_a, out_b):
        assert out.logits.shape == (3, 5)
        assert out.score.shape == (3,)


def test_one_backbone_serves_both_branches():
    net = SiameseResNet("resnet18").eval()
    plain = torchvision.models.resnet18(weights=None)
    features = plain.fc.in_features
    heads = (features * 5 + 5) + (features + 1)
    backbone = sum(p.numel() for p in plain.parameters()) - sum(
        p.numel() for p in plain.fc.parameters()
    )
    assert sum(p.numel() for p in net.parameters()) == backbone + heads
    # the pair pass gives exactly what each image gets on its own through the same weights
    a, b = torch.rand(4, 3, 28, 28), torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        out_a, out_b = net.forward_pair(a, b)
        alone_a, alone_b = net(a), net(b)
    assert torch.allclose(out_a.logits, alone_a.logits, atol=1e-5)
    assert torch.allclose(out_b.score, alone_b.score, atol=1e-5)


@pytest.mark.parametrize("branch", [0, 1])
def test_gradients_reach_the_backbone_from_each_branch(branch):
    net = SiameseResNet("resnet18")
    outs = net.forward_pair(torch.rand(4, 3, 28, 28), torch.rand(4, 3, 28, 28))
    outs[branch].score.sum().backward()
    grad = net.backbone.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_cifar_stem_keeps_resolution():
    net = SiameseResNet("resnet18", stem="cifar")
    assert net.backbone.conv1.stride == (1, 1) and net.backbone.conv1.kernel_size == (3, 3)
    assert isinstance(net.backbone.maxpool, torch.nn.Identity)


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="resnet18"):
        SiameseResNet("resnet19")


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    plain = SiameseResNet().eval()
    nhwc = SiameseResNet(channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        a, b = plain(x), nhwc(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.score, b.score, atol=1e-5)


def test_compile_switch_keeps_checkpoint_keys():
    from mtcsnn.losses import MultiTaskLoss
    from mtcsnn.models import MTCSNNModule

    module = MTCSNNModule(SiameseResNet(), MultiTaskLoss(), torch.optim.Adam, compile=True)
    keys = set(module.state_dict())
    module.configure_model()  # what Lightning calls before fit/validate/test
    assert getattr(module.net, "_compiled_call_impl", None) is not None
    assert set(module.state_dict()) == keys
