"""timm's own model tests (tests/test_models.py: forward, backward, default cfgs,
forward_intermediates, fx feature extraction, num_classes=0, reset_classifier(0, '')) in
their spirit, on ML-AGCN with small timm backbones; the documented differences are said
where they apply. Plus the head's attention heads through create_model, and pretrained
files without BatchNorm counters."""

import collections
import inspect
import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from agcn_pyg import MultiLabelHead, create_model, from_pretrained
from agcn_pyg.models.backbone import _filled_on_load, load_backbone_weights
from agcn_pyg.models.mlagcn import count_parameters
from agcn_pyg.train.checkpoint import ModelSpec, model_config

# resnet10t pools right after the body; MobileNetV3 has a conv head after its pooling
# (timm's EARLY_POOL_MODELS: head_hidden_size > num_features). EfficientNet-Lite0, the
# issue's converted-weights case, is the pretrained test's.
NAMES = ["resnet10t", "mobilenetv3_small_050"]
EARLY_POOL = (timm.models.MobileNetV3,)
SIZE = 64  # timm's tests cap the input size (TARGET_FFEAT_SIZE 96); this keeps the file fast


def graph(n, seed=0):
    adj = torch.rand(n, n, generator=torch.Generator().manual_seed(seed))
    return adj.fill_diagonal_(1.0)


def build(name, n=3, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("hidden_channels", [8])
    return create_model(name, n, graph(n) if n else None, **kwargs)


def plain(name, model, **kwargs):
    """The timm backbone as a timm user builds it, holding ``model``'s backbone weights."""
    ref = timm.create_model(name, num_classes=0, **kwargs).eval()
    ref.load_state_dict(model.backbone.state_dict())
    return ref


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_grad_checkpointing(name):
    model = build(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        again = model(x)
    assert out.shape == (1, 3) and not torch.isnan(out).any()
    torch.testing.assert_close(again, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=42, adj=graph(42), hidden_channels=[8]).train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert out.shape == (2, 42) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", NAMES)
def test_default_cfgs(name):
    model = build(name).eval()
    cfg = model.default_cfg
    assert model.num_classes == 3 and model.num_features > 0 and model.head_hidden_size > 0
    spatial, channel = get_spatial_dim("NCHW"), get_channel_dim("NCHW")
    x = torch.randn(1, *cfg["input_size"])  # the default size: pool_size refers to it
    ref = plain(name, model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        expected_pre = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert tuple(features.shape[d] for d in spatial) == tuple(cfg["pool_size"])
        assert features.shape[channel] == model.num_features
        assert pre.shape[1] == model.head_hidden_size
        torch.testing.assert_close(pre, expected_pre)

        model.reset_classifier(0)  # pooled features, as timm's
        assert model.num_classes == 0 and cfg["num_classes"] == 0
        torch.testing.assert_close(model(x), expected_pre)

        if not isinstance(model.backbone, EARLY_POOL):
            model.reset_classifier(0, "")  # no head and no pooling: the feature map
            torch.testing.assert_close(model(x), ref.forward_features(x))
            built = create_model(name, num_classes=0, global_pool="").eval()
            out = built(x)
            assert out.dim() == 4 and tuple(out.shape[d] for d in spatial) == cfg["pool_size"]

    # timm checks f"{classifier}.weight"; ours is the graph head, a module (README).
    state = build(name).state_dict()
    assert cfg["classifier"] == "head" and any(k.startswith("head.") for k in state)
    first = cfg["first_conv"]
    for conv in (first,) if isinstance(first, str) else first:
        assert f"{conv}.weight" in state


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_zero_is_the_backbone_feature_extractor(name):
    model = create_model(name, num_classes=0).eval()
    assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
    ref = plain(name, model)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))  # timm's num_classes=0: pooled


def test_num_classes_zero_keeps_the_head_options_for_later():
    model = create_model("resnet10t", 0, hidden_channels=[6], head_kwargs={"similarity": False})
    assert model.config["num_labels"] == 0
    model.reset_classifier(4, adj=graph(4), label_names=list("abcd"))
    assert [c.out_channels for c in model.head.convs] == [6, model.head_hidden_size]
    assert model.head.convs[0].similarity is False and model.label_names == list("abcd")
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 4)


def test_create_model_label_arguments_are_checked():
    with pytest.raises(TypeError, match="num_labels"):
        create_model("resnet10t")
    with pytest.raises(ValueError, match="'adj'.*required"):
        create_model("resnet10t", 3)
    with pytest.raises(ValueError, match="'adj' was given for 3 labels.*num_labels=0"):
        create_model("resnet10t", 0, graph(3))
    with pytest.raises(ValueError, match="'label_names'.*num_labels=0"):
        create_model("resnet10t", num_classes=0, label_names=["a"])
    with pytest.raises(ValueError, match="'num_labels' \\(3\\) and 'num_classes' \\(4\\)"):
        create_model("resnet10t", 3, graph(3), num_classes=4)
    with pytest.raises(ValueError, match="global_pool=''.*pooled"):
        create_model("resnet10t", 3, graph(3), global_pool="")
    with pytest.raises(ValueError, match="at least 0"):
        create_model("resnet10t", -1)
    with pytest.raises(ValueError, match="features_only.*forward_intermediates"):
        create_model("resnet10t", num_classes=0, features_only=True)
    assert create_model("resnet10t", 0, torch.zeros(0, 0)).num_classes == 0  # empty: fine
    assert create_model("resnet10t", num_classes=3, adj=graph(3)).num_classes == 3


def test_reset_classifier_takes_timms_positional_order(tmp_path):
    params = inspect.signature(create_model("resnet10t", 0).reset_classifier).parameters
    assert list(params)[:2] == ["num_classes", "global_pool"]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY
               for k in ("adj", "node_features", "label_names"))

    model = build("resnet10t").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        unpooled = model.forward_features(x)
    model.reset_classifier(0, "")  # the bug: '' was taken as adj and pooling kept
    with torch.no_grad():
        torch.testing.assert_close(model(x), unpooled)
    with pytest.raises(TypeError, match="'global_pool'.*adj="):
        model.reset_classifier(3, graph(3))  # the old order, refused with a pointer
    with pytest.raises(ValueError, match="pooled"):
        model.reset_classifier(3, "", adj=graph(3))

    # A new pooling travels with the model's config: save_pretrained rebuilds it.
    model.reset_classifier(3, "avgmax", adj=graph(3), label_names=list("xyz"))
    assert model.config["timm_kwargs"]["global_pool"] == "avgmax"
    model.save_pretrained(tmp_path / "m")
    back = from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(back(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model = build(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(intermediates) == len(info.channels()) >= 3
        for c, r, o in zip(info.channels(), info.reduction(), intermediates, strict=True):
            assert o.shape[1] == c and o.shape[0] == 1
            assert o.shape[2] <= math.ceil(SIZE / r) + 1 and o.shape[3] <= math.ceil(SIZE / r) + 1
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        again, _ = model.forward_intermediates(x)
        torch.testing.assert_close(again, final, rtol=1e-4, atol=1e-5)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        for a, b in zip(last_two, intermediates[-2:], strict=True):
            torch.testing.assert_close(a, b)

        # Pruning keeps the levels asked for, and drops the graph head as timm's classifier.
        kept = model.prune_intermediate_layers(indices=[1])
        assert kept == [1] and model.num_classes == 0
        torch.testing.assert_close(
            model.forward_intermediates(x, indices=[1], intermediates_only=True)[0],
            intermediates[1])


def test_forward_intermediates_needs_the_backbones(monkeypatch):
    model = build("resnet10t")
    monkeypatch.setattr(type(model.backbone), "forward_intermediates", None)
    with pytest.raises(NotImplementedError, match="'resnet10t' has no forward_intermediates"):
        model.forward_intermediates(torch.randn(1, 3, SIZE, SIZE))


def _fx_model(model, train=False):
    """timm's _create_fx_model: its notrace modules (the graph head among them) as leaves."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(),
                         autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


def test_fx_forward_and_backward(name="resnet10t"):  # timm's tracing cost: one backbone
    model = build(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        out = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(fx_out, out)

    model = build(name, n=42).train()
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(torch.randn(2, 3, SIZE, SIZE)).values()))
    out.mean().backward()
    assert out.shape[-1] == 42
    assert not [n for n, p in fx.named_parameters() if p.grad is None]
    assert count_parameters(fx) == count_parameters(model)


def test_fx_feature_extraction_by_feature_info():
    model = build("resnet10t").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    modules = [level["module"] for level in model.feature_info]
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
        # timm's helper and FeatureGraphNet: the graph head is a leaf by registration.
        nodes = {m: m for m in modules} | {"head": "logits"}
        out = timm.models.create_feature_extractor(model, return_nodes=nodes)(x)
        graph_net = timm.models.FeatureGraphNet(model, out_indices=(1, 3))(x)
        # torchvision's: the head named as a leaf.
        tv = create_feature_extractor(model, return_nodes={"head": "logits"},
                                      tracer_kwargs={"leaf_modules": [MultiLabelHead]})(x)
    for m, e in zip(modules, expected, strict=True):
        torch.testing.assert_close(out[m], e)
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(graph_net[0], expected[1])
    torch.testing.assert_close(graph_net[1], expected[3])
    torch.testing.assert_close(tv["logits"], logits)
    # Traced through (no leaf), the head says what to do instead of failing on a shape.
    with pytest.raises(TypeError, match="leaf module"):
        torch.fx.symbolic_trace(model)


# -- attention heads through the head and create_model ------------------------------------


def test_heads_one_is_the_paper_head():
    torch.manual_seed(0)
    default = MultiLabelHead(16, 4, graph(4), hidden_channels=(8,))
    torch.manual_seed(0)
    one = MultiLabelHead(16, 4, graph(4), hidden_channels=(8,), heads=1)
    assert default.state_dict().keys() == one.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(),
                                                   one.state_dict().values(), strict=True))
    x = torch.randn(3, 16)
    torch.testing.assert_close(one(x), default(x), rtol=0, atol=0)
    # heads=1 is not written into the config: earlier configs stay the same.
    assert "heads" not in create_model("resnet10t", 3, graph(3), heads=1).config["head_kwargs"]


def test_heads_arguments_are_checked():
    with pytest.raises(ValueError, match="'hidden_channels' \\[6\\] must be multiples of heads=4"):
        MultiLabelHead(16, 4, graph(4), hidden_channels=(6,), heads=4)
    with pytest.raises(ValueError, match="'heads' must be an integer"):
        MultiLabelHead(16, 4, graph(4), heads=0)
    with pytest.raises(ValueError, match="'heads' \\(2\\) and head_kwargs\\['heads'\\] \\(4\\)"):
        create_model("resnet10t", 3, graph(3), heads=2, head_kwargs={"heads": 4})


@pytest.mark.parametrize("concat", [True, False])
def test_heads_layout(concat):
    heads, hidden, d = 4, 8, 16
    head = MultiLabelHead(d, 5, graph(5), hidden_channels=(hidden,), heads=heads, concat=concat)
    first, last = head.convs
    assert (first.heads, last.heads) == (heads, heads)
    assert first.concat is concat and last.concat is False
    assert first.out_channels == (hidden // heads if concat else hidden)
    assert last.out_channels == d
    assert last.in_channels == hidden
    assert head.classifiers().shape == (5, d)
    assert head(torch.randn(2, d)).shape == (2, 5)


@pytest.mark.parametrize("heads,concat", [(1, True), (2, True), (2, False)])
def test_heads_parameter_count(heads, concat):
    """Each layer: W, W_src, W_dst of in x (H * C) (eq. 3-5, one set per head), two
    attention vectors of H * C, and the bias: H * C when the heads are concatenated, C when
    averaged. The last layer averages H heads of D channels."""
    n, d, hidden = 5, 12, 8
    head = MultiLabelHead(d, n, graph(n), hidden_channels=(hidden,), heads=heads, concat=concat)
    per_head_hidden = hidden // heads if concat else hidden
    layers = [(n, per_head_hidden, concat), (hidden, d, False)]
    expected = sum(3 * c_in * heads * c + 2 * heads * c + (heads * c if cat else c)
                   for c_in, c, cat in layers)
    assert count_parameters(head) == expected


def test_heads_round_trip_save_pretrained_checkpoint_and_reset(tmp_path):
    model = build("resnet10t", n=3, heads=2).eval()
    assert model.config["head_kwargs"]["heads"] == 2
    assert all(conv.heads == 2 for conv in model.head.convs)
    x = torch.randn(2, 3, SIZE, SIZE)
    model.save_pretrained(tmp_path / "m")
    back = from_pretrained(tmp_path / "m")
    assert all(conv.heads == 2 for conv in back.head.convs)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)

    config = model_config("resnet10t", 3, hidden_channels=[8], head_kwargs={"heads": 2})
    rebuilt = ModelSpec(config, list("abc"), graph(3)).build()
    assert count_parameters(rebuilt) == count_parameters(model)

    model.reset_classifier(5, adj=graph(5))
    assert all(conv.heads == 2 for conv in model.head.convs)


# -- pretrained files without BatchNorm counters ----------------------------------------------


def _state_without_counters(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_pretrained_without_batchnorm_counters_loads(tmp_path):
    source = timm.create_model("efficientnet_lite0", num_classes=0)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)  # weights that differ from a fresh model's
    state = _state_without_counters(source)
    assert len(state) < len(source.state_dict())  # the 245 of 294 keys
    save_file(state, tmp_path / "lite0.safetensors")
    model = create_model("efficientnet_lite0", 3, graph(3), hidden_channels=[8],
                         pretrained=tmp_path / "lite0.safetensors")
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    # A real mismatch is still refused, counted as before.
    del state["bn1.running_var"]
    save_file(state, tmp_path / "broken.safetensors")
    total, absent = len(source.state_dict()), len(source.state_dict()) - len(state)
    with pytest.raises(ValueError, match=f"(?s){total - absent} of {total} keys match, "
                                         f"{absent} missing.*{absent - 1} of the missing keys "
                                         f"are BatchNorm.*missing: bn1.running_var, "):
        create_model("efficientnet_lite0", 3, graph(3), pretrained=tmp_path / "broken.safetensors")


@pytest.mark.parametrize("versioned", [False, True])
def test_counters_accepted_exactly_where_pytorch_accepts_them(versioned):
    """The rule is PyTorch's: a missing counter is filled in unless the state dict records
    the norm layer's version 2 (which added it)."""
    source = timm.create_model("resnet10t", num_classes=0)
    state = collections.OrderedDict(_state_without_counters(source))
    if versioned:
        state._metadata = source.state_dict()._metadata
    backbone = timm.create_model("resnet10t", num_classes=0)
    counters = {k for k in backbone.state_dict() if k.endswith("num_batches_tracked")}
    ours = counters <= _filled_on_load(backbone, state)
    try:
        backbone.load_state_dict(state, strict=True)
        theirs = True
    except RuntimeError:
        theirs = False
    assert ours == theirs == (not versioned)


def test_load_backbone_weights_without_counters_from_a_torch_file(tmp_path):
    source = timm.create_model("resnet10t", num_classes=0)
    torch.save(_state_without_counters(source), tmp_path / "r.pth")
    backbone = timm.create_model("resnet10t", num_classes=0)
    load_backbone_weights(backbone, tmp_path / "r.pth")
    assert torch.equal(backbone.conv1[0].weight, source.conv1[0].weight)
