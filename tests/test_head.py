"""MultiLabelHead and create_model: shapes, gradients, cache, parameter parity, errors."""

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from agcn_pyg import AdaptiveGCNConv, MultiLabelHead, create_model
from agcn_pyg.models.mlagcn import count_parameters, paper_parameter_counts


def label_graph(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=g)


def test_head_computes_stacked_layers_then_dot_product():
    n, d = 6, 10
    adj = label_graph(n)
    head = MultiLabelHead(d, n, adj, hidden_channels=(7,))
    assert [(c.lin.in_channels, c.lin.out_channels) for c in head.convs] == [(6, 7), (7, 10)]
    x = torch.randn(3, d)
    # Independent composition of the two layers with LeakyReLU(0.2) in between.
    f = F.leaky_relu(head.convs[0](torch.eye(n), adj), 0.2)
    classifiers = head.convs[1](f, adj)
    torch.testing.assert_close(head(x), x @ classifiers.t())
    assert head(x).shape == (3, n)


@pytest.mark.parametrize("n,hidden", [(80, (1024,)), (20, ()), (20, (64, 64))])
def test_initial_classifiers_have_linear_head_scale(n, hidden):
    d = 2048
    g = torch.Generator().manual_seed(0)
    adj = torch.rand(n, n, generator=g)
    adj.fill_diagonal_(1.0)
    head = MultiLabelHead(d, n, adj, hidden_channels=hidden)
    linear = torch.nn.Linear(d, n)  # weights with standard deviation 1 / sqrt(3 d)
    with torch.no_grad():
        rms = head.classifiers().pow(2).mean().sqrt()
        torch.testing.assert_close(rms, linear.weight.pow(2).mean().sqrt(), rtol=0.05, atol=0)
        # so the first logits of pooled ReLU features are as small as a linear head's
        features = torch.rand(16, d)
        assert head(features).abs().max() < 5 * linear(features).abs().max()
    head.reset_parameters()  # the rescale is part of the reset
    with torch.no_grad():
        torch.testing.assert_close(head.classifiers().pow(2).mean().sqrt(),
                                   torch.tensor(1 / (3 * d) ** 0.5), rtol=1e-4, atol=0)


def test_layer_options_pass_through():
    head = MultiLabelHead(8, 4, label_graph(4), hidden_channels=(), similarity=False,
                          attention=False)
    assert len(head.convs) == 1
    assert not head.convs[0].attention and not head.convs[0].similarity


def test_eval_cache_is_exact_and_invalidated():
    n, d = 5, 8
    head = MultiLabelHead(d, n, label_graph(n), hidden_channels=(6,))
    x = torch.randn(4, d)
    head.eval()
    with torch.no_grad():
        first = head(x)
        assert head._cache is not None
        cached = head._cache[1]
        torch.testing.assert_close(head(x), first)
        assert head._cache[1] is cached  # reused, not recomputed
        torch.testing.assert_close(first, x @ head.classifiers().t())  # uncached

        head.convs[0].lin.weight.add_(0.5)  # an in-place parameter update
        changed = head(x)
        assert head._cache[1] is not cached
        torch.testing.assert_close(changed, x @ head.classifiers().t())
        assert not torch.allclose(changed, first)

        # Parameters replaced by new tensor objects (version 0 again) invalidate it.
        other = MultiLabelHead(d, n, label_graph(n, seed=1), hidden_channels=(6,))
        head.load_state_dict(other.state_dict(), assign=True)
        torch.testing.assert_close(head(x), x @ other.classifiers().t())

    # An optimizer step in training mode invalidates it too.
    head.train()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    head(x).sum().backward()
    opt.step()
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(x), x @ head.classifiers().t())

    # With gradients enabled in eval the head still backpropagates.
    head.zero_grad()
    head(x).sum().backward()
    assert head.convs[0].lin.weight.grad is not None


def test_graphs_per_layer():
    n = 5
    adj = label_graph(n)
    head = MultiLabelHead(8, n, adj, hidden_channels=(6,))
    graphs = head.graphs()
    assert len(graphs) == 2
    # Each layer's graphs are those of its own input: identity, then LeakyReLU(layer 1).
    inputs = [torch.eye(n), F.leaky_relu(head.convs[0](torch.eye(n), adj), 0.2)]
    for g, conv, x in zip(graphs, head.convs, inputs, strict=True):
        assert g.A.shape == g.B.shape == g.C.shape == (n, n)
        torch.testing.assert_close(g.A, adj)
        expected = conv.graphs(x, adj)
        torch.testing.assert_close(g.B, expected.B)
        torch.testing.assert_close(g.C, expected.C)
    # One-hot inputs are orthogonal: the first layer's C is the identity.
    torch.testing.assert_close(graphs[0].C, torch.eye(n))


def test_to_linear_matches_head():
    head = MultiLabelHead(8, 5, label_graph(5)).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(head.to_linear()(x), head(x))


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="'adj' must be"):
        MultiLabelHead(8, 5, torch.rand(4, 4))
    with pytest.raises(ValueError, match="'node_features' must be"):
        MultiLabelHead(8, 5, torch.rand(5, 5), node_features=torch.rand(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        MultiLabelHead(8, 2, torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    head = MultiLabelHead(8, 5, torch.rand(5, 5))
    with pytest.raises(ValueError, match=r"\[batch, 8\]"):
        head(torch.randn(2, 9))


def test_gradients_reach_backbone_graph_layers_and_node_features():
    n = 4
    model = create_model("resnet18", n, label_graph(n), num_layers=2,
                         node_features=torch.randn(n, 12), learn_node_features=True)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, n)
    logits.sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    for conv in model.head.convs:
        for name, p in conv.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.head.node_features.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("tresnet_m", {}, 64),
        ("resnet18", {}, 32),
        ("convnext_atto", {}, 32),
        ("vit_tiny_patch16_224", {"img_size": 32}, 32),
        ("efficientnet_b0", {}, 32),
    ],
)
def test_timm_backbones_forward_backward(name, kwargs, size):
    n = 5
    model = create_model(name, n, label_graph(n), num_layers=1, **kwargs)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, n)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_paper_parameter_counts():
    # Published: COCO 29.9M (1 layer) and 35.9M (2 layers); exact rule 29.83 / 35.88.
    one, _ = paper_parameter_counts(80, 1)
    two, _ = paper_parameter_counts(80, 2)
    assert abs(one - 29.9) <= 0.1 and abs(two - 35.9) <= 0.1
    body = count_parameters(timm.create_model("tresnet_m", num_classes=0))
    assert abs(one * 1e6 - (body + 3 * 80 * 2048 + 3 * 2048)) < 1
    # VG-500 published 32.7M / 37.4M: matched once A (500 x 500) counts as a parameter.
    _, one_vg = paper_parameter_counts(500, 1)
    _, two_vg = paper_parameter_counts(500, 2)
    assert abs(one_vg - 32.7) <= 0.05 and abs(two_vg - 37.4) <= 0.05


def test_pretrained_from_local_files(tmp_path):
    source = timm.create_model("resnet18", num_classes=1000)
    state = source.state_dict()
    torch.save(state, tmp_path / "r18.pth")
    save_file(state, str(tmp_path / "r18.safetensors"))
    for file in ("r18.pth", "r18.safetensors"):
        model = create_model("resnet18", 3, label_graph(3), pretrained=tmp_path / file)
        torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)
        assert model.backbone.num_classes == 0
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("resnet18", 3, label_graph(3), pretrained=tmp_path / "missing.pth")


def test_param_groups_no_decay_on_bias_and_norm():
    model = create_model("resnet18", 3, label_graph(3), num_layers=1)
    groups = model.param_groups(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
    decay = next(g for g in groups if g["weight_decay"] == 1e-4)
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "backbone.bn1.weight" in no_decay_names and "head.convs.0.bias" in no_decay_names
    assert "head.convs.0.lin.weight" in {names[id(p)] for p in decay["params"]}
    assert len(no_decay["params"]) + len(decay["params"]) == len(names)


def test_head_under_bf16_autocast_cpu():
    model = create_model("resnet18", 4, label_graph(4), num_layers=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(logits).all()


@pytest.mark.cuda
def test_cuda_bf16_channels_last():
    model = create_model("resnet18", 4, label_graph(4)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().sum().backward()
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_compiled_classifiers_have_no_graph_breaks_and_match():
    import torch._dynamo

    head = MultiLabelHead(16, 6, label_graph(6), hidden_channels=(8,))
    explanation = torch._dynamo.explain(head.classifiers)()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    expected = head.classifiers()
    head.compile_classifiers()
    torch.testing.assert_close(head.classifiers(), expected, rtol=1e-5, atol=1e-5)


def test_capture_classifiers_does_nothing_on_the_cpu():
    # coco_train.py calls it by default: on the CPU it must leave the head as it was.
    head = MultiLabelHead(16, 6, label_graph(6), hidden_channels=(8,))
    eager = head.classifiers
    assert head.capture_classifiers() is head
    assert head.classifiers == eager  # the bound method, not a compiled function
    features = torch.randn(3, 16)
    head(features).sum().backward()
    assert head.convs[0].lin.weight.grad is not None


def test_head_layers_are_adaptive_gcn_conv():
    head = MultiLabelHead(16, 3, label_graph(3), hidden_channels=(8, 8))
    assert all(isinstance(c, AdaptiveGCNConv) for c in head.convs) and len(head.convs) == 3
