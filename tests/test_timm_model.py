"""ML-AGCN as a timm model: every backbone's pooled size, timm's model API and helpers,
local weights checked key by key, save_pretrained / from_pretrained without pickle."""

import json
import pickle

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.models import PretrainedCfg
from tiny import NAMES, make_checkpoint

from agcn_pyg import (
    MLAGCN,
    MultiLabelHead,
    build_transforms,
    create_model,
    from_pretrained,
    predict,
    squash_data_config,
    strongest_edges,
)
from agcn_pyg.tools.export import export_model
from agcn_pyg.train.checkpoint import model_from_checkpoint


def graph(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(n, n, generator=g)
    return adj.fill_diagonal_(1.0)


def reference(name, **kwargs):
    """The plain timm backbone, as a timm user builds it."""
    return timm.create_model(name, num_classes=0, **kwargs).eval()


BACKBONES = [
    ("mobilenetv3_large_100", {}),
    ("mobilenetv4_conv_small", {}),
    ("ghostnet_100", {}),
    ("hgnetv2_b0", {}),
    ("lcnet_050", {}),
    ("efficientnet_b0", {}),
    ("resnet18", {}),
    ("convnext_atto", {}),
    ("vit_tiny_patch16_224", {"img_size": 32}),
    ("tresnet_m", {}),
]


@pytest.mark.parametrize("name,kwargs", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_backbone_pools_to_its_pre_logits_size(name, kwargs):
    n = 3
    model = create_model(name, n, graph(n), num_layers=1, label_names=["a", "b", "c"],
                         **kwargs).eval()
    ref = reference(name, **kwargs)
    ref.load_state_dict(model.backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = ref.forward_head(ref.forward_features(x), pre_logits=True)
        logits = model(x)
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        classifiers = model.head.classifiers()
    assert logits.shape == (2, n)
    # The head takes what the backbone hands its classifier, not num_features.
    assert model.head_hidden_size == model.head.in_features == pooled.shape[-1]
    assert model.num_features == ref.num_features
    torch.testing.assert_close(ours, pooled)
    torch.testing.assert_close(logits, pooled @ classifiers.t())

    # timm's data config of the model: the backbone's own, as built (a ViT at img_size).
    cfg = resolve_data_config({}, model=model)
    expected = resolve_data_config({}, model=ref)
    if "img_size" in kwargs:
        expected["input_size"] = (3, kwargs["img_size"], kwargs["img_size"])
    assert cfg == expected
    assert model.pretrained_cfg["num_classes"] == n
    assert model.pretrained_cfg["label_names"] == ("a", "b", "c")
    assert model.pretrained_cfg["architecture"] == ref.pretrained_cfg["architecture"]


def test_issue_example_mobilenetv3_64px():
    model = create_model("mobilenetv3_large_100", num_labels=5, adj=torch.rand(5, 5)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_timm_model_api():
    n = 4
    model = create_model("resnet18", n, graph(n), num_layers=2, hidden_channels=[16],
                         label_names=list("wxyz"))
    ref = reference("resnet18")
    assert model.num_classes == n
    assert model.num_features == ref.num_features == 512
    assert model.get_classifier() is model.head
    assert model.default_cfg is model.pretrained_cfg
    assert model.label_names == list("wxyz")
    cfg = PretrainedCfg(**model.pretrained_cfg)  # a valid timm config
    assert cfg.classifier == "head" and cfg.num_classes == n
    assert cfg.first_conv == f"backbone.{ref.pretrained_cfg['first_conv']}"
    # The classifier named in pretrained_cfg is the module get_classifier returns.
    assert model.get_submodule(cfg.classifier) is model.get_classifier()
    assert isinstance(model.get_submodule(cfg.first_conv), torch.nn.Conv2d)
    assert not cfg.url and not cfg.hf_hub_id and not cfg.file  # not the backbone's weights

    transform = create_transform(**resolve_data_config({}, model=model))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), np.uint8))
    assert transform(image).shape == (3, 224, 224)

    # Gradient checkpointing in the backbone gives the same gradients.
    x, grads = torch.randn(2, 3, 32, 32), []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        assert model.backbone.grad_checkpointing is enable
        model.zero_grad()
        model(x).sum().backward()
        grads.append(model.backbone.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_reset_classifier():
    model = create_model("resnet10t", 3, graph(3), num_layers=1, label_names=list("abc")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)

    adj = graph(6, seed=1)
    model.reset_classifier(6, adj=adj, label_names=list("uvwxyz"))
    assert isinstance(model.head, MultiLabelHead) and model.num_classes == 6
    assert torch.equal(model.head.adj, adj)
    assert len(model.head.convs) == 1  # the layer layout it was created with
    assert model.pretrained_cfg["num_classes"] == 6
    assert model.pretrained_cfg["label_names"] == tuple("uvwxyz")
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled @ model.head.classifiers().t())

    with pytest.raises(ValueError, match="'adj'"):
        model.reset_classifier(2)
    model.reset_classifier(6)  # same N: the graph and names are kept, the weights reset
    assert torch.equal(model.head.adj, adj) and model.label_names == list("uvwxyz")

    model.reset_classifier(0)  # timm's convention: the pooled features come out
    assert model.num_classes == 0 and "label_names" not in model.pretrained_cfg
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled)

    # Another pooling in the backbone: the new head follows its pooled size.
    model.reset_classifier(2, adj=graph(2), global_pool="catavgmax")
    assert model.head.in_features == model.head_hidden_size == 2 * pooled.shape[-1]
    with torch.no_grad():
        assert model(x).shape == (2, 2)


def test_timm_optimizer_layer_decay_scheduler_and_ema():
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    model = create_model("vit_tiny_patch16_224", 3, graph(3), num_layers=1, img_size=32)
    names = {id(p): n for n, p in model.named_parameters()}

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0
                for p in g["params"]}
    # What the ViT itself exempts, under this model's names, and the head's 1-D tensors.
    exempt = {f"backbone.{n}" for n in model.backbone.no_weight_decay()} & set(names.values())
    assert "backbone.pos_embed" in exempt and exempt <= no_decay
    assert "head.convs.0.bias" in no_decay and "head.convs.0.lin.weight" not in no_decay

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    depth = len(model.backbone.blocks)
    assert scale["head.convs.0.lin.weight"] == 1.0
    assert scale["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.5 ** depth)
    assert scale["backbone.patch_embed.proj.weight"] == pytest.approx(0.5 ** (depth + 1))

    scheduler, epochs = create_scheduler_v2(opt, "cosine", num_epochs=2, warmup_epochs=0)
    ema = ModelEmaV3(model, decay=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    scheduler.step(1)
    ema.update(model)
    assert epochs == 2 and ema.module.pretrained_cfg == model.pretrained_cfg


def test_trained_data_config_and_transform():
    model = create_model("resnet10t", 3, graph(3), num_layers=1)
    ref = reference("resnet10t")
    model.set_data_config(squash_data_config(model, 48))
    cfg = resolve_data_config({}, model=model)
    assert cfg == dict(input_size=(3, 48, 48), interpolation=ref.pretrained_cfg["interpolation"],
                       mean=tuple(ref.pretrained_cfg["mean"]),
                       std=tuple(ref.pretrained_cfg["std"]), crop_pct=1.0, crop_mode="squash")
    # timm's own evaluation transform of that config is the recipe's squash resize.
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 40, 3), np.uint8))
    expected = build_transforms(cfg, img_size=48, train=False)(image)
    torch.testing.assert_close(create_transform(**cfg)(image), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown keys"):
        model.set_data_config({"img_size": 48})


def test_checkpoint_model_carries_its_labels_and_trained_config(tmp_path):
    model, _ = model_from_checkpoint(make_checkpoint(tmp_path / "c.pth"))
    assert model.label_names == NAMES
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 32, 32)
    assert (cfg["crop_mode"], cfg["crop_pct"]) == ("squash", 1.0)


# -- pretrained backbone weights: local files only, checked ------------------------------


def test_pretrained_true_hub_names_and_tags_are_refused(tmp_path):
    with pytest.raises(ValueError, match="downloads nothing"):
        create_model("resnet10t", 3, graph(3), pretrained=True)
    with pytest.raises(ValueError, match="downloads nothing"):
        create_model("resnet10t", 3, graph(3), pretrained="hf-hub:timm/resnet10t.c3_in1k")
    with pytest.raises(FileNotFoundError, match="'c3_in1k' does not exist.*downloads nothing"):
        create_model("resnet10t", 3, graph(3), pretrained="c3_in1k")
    with pytest.raises(ValueError, match="downloads nothing"):
        create_model("hf-hub:timm/resnet10t.c3_in1k", 3, graph(3))
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="NumPy archive"):
        create_model("resnet10t", 3, graph(3), pretrained=tmp_path / "w.npz")
    with pytest.raises(ValueError, match="pretrained='path'"):
        create_model("resnet10t", 3, graph(3),
                     pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))


def test_pretrained_common_layouts_load(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    state = source.state_dict()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "timm_train.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    (tmp_path / "hub").mkdir()
    save_file(state, str(tmp_path / "hub" / "model.safetensors"))
    for file in ("w.safetensors", "timm_train.pth", "ddp.pth", "hub"):
        model = create_model("resnet10t", 3, graph(3), pretrained=tmp_path / file)
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, state[k]), (file, k)


def test_pretrained_keys_that_do_not_fit_are_refused(tmp_path):
    state = timm.create_model("resnet10t", num_classes=0).state_dict()
    total = len(state)  # the backbone's own key count, from timm
    torch.save({f"backbone.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(ValueError) as info:
        create_model("resnet10t", 3, graph(3), pretrained=tmp_path / "prefixed.pth")
    message = str(info.value)
    assert f"0 of {total} keys match, {total} missing, {total} unexpected" in message
    assert "starts with 'backbone.'" in message

    partial = dict(state)
    del partial["conv1.0.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=f"(?s){total - 1} of {total} keys match, 1 missing, "
                                         f"0 unexpected.*conv1.0.weight"):
        create_model("resnet10t", 3, graph(3), pretrained=tmp_path / "partial.pth")

    wide = timm.create_model("resnet14t", num_classes=0).state_dict()  # other shapes
    torch.save(wide, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="with another shape"):
        create_model("resnet10t", 3, graph(3), pretrained=tmp_path / "other.pth")

    # A whole ML-AGCN checkpoint is not backbone weights.
    with pytest.raises(ValueError, match="does not fit the backbone"):
        create_model("resnet10t", 3, graph(3), pretrained=make_checkpoint(tmp_path / "c.pth"))


def test_pretrained_runs_the_model_familys_converter(tmp_path):
    # ViT weights for a 2x2 patch grid into a 3x3 one: timm's checkpoint_filter_fn
    # resamples the position embedding, as timm.create_model would.
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    save_file(source.state_dict(), str(tmp_path / "vit32.safetensors"))
    model = create_model("vit_tiny_patch16_224", 3, graph(3), num_layers=1, img_size=48,
                         pretrained=tmp_path / "vit32.safetensors")
    assert model.backbone.pos_embed.shape[1] == 1 + 9
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


# -- save_pretrained / from_pretrained -----------------------------------------------------


def _trained(**kwargs):
    torch.manual_seed(0)
    n = 4
    model = create_model("resnet10t", n, graph(n), hidden_channels=[8],
                         node_features=torch.randn(n, 5), label_names=list("abcd"), **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    model.set_data_config(squash_data_config(model, 40))
    return model.eval()


@pytest.mark.parametrize("kwargs", [
    {},
    {"learn_node_features": True, "head_kwargs": {"share_weights": True, "similarity": False}},
])
def test_save_pretrained_round_trip_without_pickle(tmp_path, monkeypatch, kwargs):
    model = _trained(**kwargs)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json",
                                                                  "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["backbone"] == "resnet10t" and config["label_names"] == list("abcd")
    assert config["pretrained_cfg"]["crop_mode"] == "squash"
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("head.adj"), model.head.adj)
        assert torch.equal(f.get_tensor("head.node_features"), model.head.node_features)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    for rebuilt in (from_pretrained(tmp_path / "m"), MLAGCN.from_pretrained(tmp_path / "m")):
        x = torch.randn(3, 3, 40, 40)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), model(x))
        assert rebuilt.pretrained_cfg == model.pretrained_cfg
        assert resolve_data_config({}, model=rebuilt) == resolve_data_config({}, model=model)
        assert rebuilt.label_names == list("abcd")
        assert type(rebuilt.head.node_features) is type(model.head.node_features)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path)
    _trained().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="from_pretrained"):  # not backbone weights
        create_model("resnet10t", 4, graph(4), pretrained=tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable"):
        from_pretrained(tmp_path / "m")


def test_predict_plot_export_accept_a_folder(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c.pth", ema=True)
    model, _ = model_from_checkpoint(ckpt)  # the EMA weights
    model.save_pretrained(tmp_path / "m")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), np.uint8)).save(image)

    from_folder = predict(tmp_path / "m", [image], progress=False)[0]
    from_ckpt = predict(ckpt, [image], progress=False)[0]
    assert from_folder["probabilities"] == from_ckpt["probabilities"]
    assert from_folder["labels"] == from_ckpt["labels"] and set(from_ckpt["labels"]) <= set(NAMES)
    assert strongest_edges(tmp_path / "m") == strongest_edges(ckpt)
    program = export_model(tmp_path / "m", path=tmp_path / "m.pt2")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_coco_train_refuses_pretrained_keys_that_do_not_fit(tmp_path, capsys):
    # Issue 12 item 6: a prefixed state dict used to train a random backbone silently.
    import importlib.util
    from pathlib import Path

    from agcn_pyg import make_synthetic_coco

    script = Path(__file__).resolve().parents[1] / "examples" / "coco_train.py"
    spec = importlib.util.spec_from_file_location("coco_train_for_timm_test", script)
    coco_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coco_train)

    data = make_synthetic_coco(tmp_path / "coco", num_train=8, num_val=4, num_labels=3,
                               image_size=32, seed=0)
    state = timm.create_model("resnet10t", num_classes=1000).state_dict()
    torch.save({f"backbone.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    rc = coco_train.main([
        "--train-ann", data.train_ann_file, "--train-images", data.train_image_dir,
        "--val-ann", data.val_ann_file, "--val-images", data.val_image_dir,
        "--model", "resnet10t", "--img-size", "32", "--epochs", "1", "--workers", "0",
        "--no-progress", "--pretrained", str(tmp_path / "prefixed.pth"),
        "--output", str(tmp_path / "run"),
    ])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not fit the backbone 'resnet10t'" in err and "starts with 'backbone.'" in err
    assert not (tmp_path / "run" / "last.pth").exists()
