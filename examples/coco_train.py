"""Train and evaluate ML-AGCN on MS-COCO (or any COCO-format or list-file multi-label data).

Demo (no data needed; about two minutes on two CPU cores)::

    python examples/coco_train.py

COCO 2014 with the paper's recipe (TResNet-M 448, ASL, Adam 1e-4, OneCycle, EMA)::

    torchrun --nproc_per_node=8 examples/coco_train.py --data /data/coco \\
        --pretrained tresnet_m_in21k.pth --output runs/coco

Resume (``auto`` = ``<output>/last.pth``), evaluate a checkpoint::

    python examples/coco_train.py --resume auto --output runs/coco
    python examples/coco_train.py --evaluate runs/coco/best.pth

See ``examples/README.md`` for every flag and what the files in ``--output`` hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import torch

from agcn_pyg import (
    CocoMultiLabel,
    LabelGraph,
    ListFileMultiLabel,
    asymmetric_loss,
    build_transforms,
    count_parameters,
    create_model,
    format_table,
    load_node_features,
    make_synthetic_coco,
)
from agcn_pyg.checkpoint import (
    atomic_write,
    load_checkpoint,
    model_config,
    model_from_checkpoint,
    save_checkpoint,
)
from agcn_pyg.curves import plot_curves
from agcn_pyg.distributed import (
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from agcn_pyg.engine import (
    NonFiniteLossError,
    StopSignal,
    build_eval_loader,
    build_train_loader,
    capture_rng_state,
    derive_seed,
    evaluate,
    load_training_state,
    seed_everything,
    train_one_epoch,
)
from agcn_pyg.metrics import TABLE_COLUMNS

DATA_FLAGS = ("data", "train_ann", "train_images", "val_ann", "val_images",
              "train_list", "val_list", "image_root", "val_image_root", "label_names",
              "image_labels", "num_labels")
# Flags a resumed run may change; every other one is taken from the checkpoint, since it
# shapes the training trajectory.
RUNTIME_FLAGS = {*DATA_FLAGS, "year", "epochs", "workers", "pin_memory", "persistent_workers",
                 "prefetch_factor", "log_interval", "no_progress", "output", "resume",
                 "evaluate", "device", "eval_batch_size", "compile_head"}
# What the demo changes, unless given on the command line.
DEMO_DEFAULTS = dict(model="resnet10t", img_size=64, epochs=12, batch_size=32, lr=3e-4,
                     ema_decay=0.98, amp="off", workers=2,
                     log_interval=5)

TABLE1_COLUMNS = ("Params (M)", *TABLE_COLUMNS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or evaluate ML-AGCN (multi-label image classification).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    BoolOpt = argparse.BooleanOptionalAction

    g = p.add_argument_group("data (COCO format; none given = synthetic demo)")
    g.add_argument("--data", help="COCO root holding train2014/ val2014/ annotations/ "
                   "(or the 2017 names)")
    g.add_argument("--year", choices=("auto", "2014", "2017"), default="auto",
                   help="COCO release under --data")
    g.add_argument("--train-ann", help="COCO-format instances JSON for training")
    g.add_argument("--train-images", help="image folder of --train-ann")
    g.add_argument("--val-ann", help="COCO-format instances JSON for validation")
    g.add_argument("--val-images", help="image folder of --val-ann")
    g.add_argument("--keep-empty", action="store_true",
                   help="keep training images without annotations as all-negative")
    g = p.add_argument_group("data (list files, e.g. VG-500)")
    g.add_argument("--train-list", help="'path label label ...' lines for training")
    g.add_argument("--val-list", help="the same for validation")
    g.add_argument("--image-root", help="folder the list paths are relative to")
    g.add_argument("--val-image-root", help="for --val-list (default: --image-root)")
    g.add_argument("--label-names", help="label names, .txt (one a line) or .json")
    g.add_argument("--image-labels", help="JSON {image: [label indices]} for lists of bare "
                   "image names (SSGRL's vg_category_500_labels_index.json)")
    g.add_argument("--num-labels", type=int,
                   help="number of labels without --label-names (VG-500: 500)")
    g = p.add_argument_group("demo")
    g.add_argument("--demo-train", type=int, default=1000, help="synthetic training images")
    g.add_argument("--demo-val", type=int, default=161, help="synthetic validation images")
    g.add_argument("--demo-labels", type=int, default=10, help="synthetic labels")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="tresnet_m", help="timm backbone")
    g.add_argument("--pretrained", help="local timm checkpoint of the backbone")
    g.add_argument("--img-size", type=int, default=448)
    g.add_argument("--num-layers", type=int, default=2, help="graph layers")
    g.add_argument("--hidden", type=int, default=1024, help="hidden graph channels")
    g.add_argument("--node-features", help=".npy/.pt [N, d] node features (default one-hot)")
    g.add_argument("--no-attention", action="store_true", help="ablation: drop B (eq. 4-6)")
    g.add_argument("--no-similarity", action="store_true", help="ablation: drop C (eq. 7)")

    g = p.add_argument_group("recipe (ASL)")
    g.add_argument("--epochs", type=int, default=40)
    g.add_argument("--sched-epochs", type=int, default=None,
                   help="OneCycle length in epochs (default: --epochs; ASL's train.py "
                   "schedules 80 and stops at 40)")
    g.add_argument("--batch-size", type=int, default=64, help="per process")
    g.add_argument("--eval-batch-size", type=int, default=None, help="default --batch-size")
    g.add_argument("--lr", type=float, default=1e-4, help="OneCycle max_lr")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--pct-start", type=float, default=0.2)
    g.add_argument("--gamma-neg", type=float, default=4.0)
    g.add_argument("--gamma-pos", type=float, default=0.0)
    g.add_argument("--clip", type=float, default=0.05, help="ASL probability margin")
    g.add_argument("--ema-decay", type=float, default=0.9997, help="0 disables the EMA")
    g.add_argument("--randaugment", default="rand-m9-mstd0.5", help="timm string or 'none'")
    g.add_argument("--cutout", type=float, default=0.5, help="Cutout probability")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="auto: bf16 on GPUs that have it, else fp16 + GradScaler; off on CPU")
    g.add_argument("--channels-last", action=BoolOpt, default=None, help="default: on CUDA")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (CUDA)")
    g.add_argument("--compile-head", action="store_true",
                   help="torch.compile the graph layers (MultiLabelHead.compile_classifiers): "
                   "fewer kernels per step on a GPU")
    g.add_argument("--threshold", type=float, default=0.5, help="for CP/CR/CF1/OP/OR/OF1")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("runtime")
    g.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available")
    # The machine's cores shared by the processes torchrun starts on it.
    workers = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    g.add_argument("--workers", type=int, default=max(1, min(8, workers)),
                   help="DataLoader workers per process (default: cores / local processes, "
                   "at most 8)")
    g.add_argument("--pin-memory", action=BoolOpt, default=None, help="default: on CUDA")
    g.add_argument("--persistent-workers", action=BoolOpt, default=True)
    g.add_argument("--prefetch-factor", type=int, default=2, help="batches per worker")
    g.add_argument("--output", help="output folder (default runs/<timestamp>)")
    g.add_argument("--resume", help="checkpoint to continue from, or 'auto' = <output>/last.pth")
    g.add_argument("--evaluate", metavar="CKPT", help="only evaluate this checkpoint")
    g.add_argument("--log-interval", type=int, default=20,
                   help="steps between host syncs (progress bar, NaN and signal checks)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the user actually passed on the command line."""
    probe = argparse.ArgumentParser(add_help=False)
    for a in parser._actions:
        if a.option_strings and a.dest != "help":
            kw = dict(dest=a.dest, default=argparse.SUPPRESS)
            if isinstance(a, argparse.BooleanOptionalAction):
                probe.add_argument(*a.option_strings, action=argparse.BooleanOptionalAction, **kw)
            elif a.nargs == 0:
                probe.add_argument(*a.option_strings, action="store_const", const=True, **kw)
            else:
                probe.add_argument(*a.option_strings, nargs=a.nargs, **kw)
    return set(vars(probe.parse_known_args(argv)[0]))


def _print(*a, **k) -> None:
    print(*a, **k, flush=True)


class UsageError(Exception):
    """A bad command line or input file: printed without a traceback, exit code 2."""


@contextlib.contextmanager
def setup_errors():
    """Turns the clear errors of the datasets, checkpoint and model loaders (missing file,
    empty dataset, wrong format) into a :class:`UsageError`."""
    try:
        yield
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def coco_paths(args) -> tuple[str, str, str, str]:
    explicit = [args.train_ann, args.train_images, args.val_ann, args.val_images]
    if args.data is None:
        if not all(explicit):
            names = ("--train-ann", "--train-images", "--val-ann", "--val-images")
            missing = [n for n, v in zip(names, explicit, strict=True) if not v]
            raise UsageError(f"COCO-format data needs all four of --train-ann --train-images "
                             f"--val-ann --val-images (missing {' '.join(missing)}), or --data")
        return tuple(explicit)
    if not os.path.isdir(args.data):
        raise UsageError(f"--data: folder '{args.data}' does not exist")
    years = ("2014", "2017") if args.year == "auto" else (args.year,)
    for y in years:
        cand = (os.path.join(args.data, "annotations", f"instances_train{y}.json"),
                os.path.join(args.data, f"train{y}"),
                os.path.join(args.data, "annotations", f"instances_val{y}.json"),
                os.path.join(args.data, f"val{y}"))
        if os.path.isfile(cand[0]) or os.path.isdir(cand[1]):
            paths = [e or c for e, c in zip(explicit, cand, strict=True)]
            return tuple(paths)
    raise UsageError(
        f"--data: '{args.data}' holds neither COCO 2014 nor 2017: expected "
        f"annotations/instances_train{{2014,2017}}.json and train{{2014,2017}}/ (and val); "
        f"use --train-ann/--train-images/--val-ann/--val-images for other layouts")


def build_datasets(args):
    if args.train_list or args.val_list:
        missing = [f for f, v in (("--train-list", args.train_list),
                                  ("--val-list", args.val_list),
                                  ("--image-root", args.image_root),
                                  ("--label-names or --image-labels",
                                   args.label_names or args.image_labels)) if not v]
        if missing:
            raise UsageError(f"list-file data needs {' '.join(missing)} too")
        labels = dict(label_names_file=args.label_names, image_labels_file=args.image_labels,
                      num_labels=args.num_labels)
        train = ListFileMultiLabel(args.train_list, args.image_root, **labels)
        val = ListFileMultiLabel(args.val_list, args.val_image_root or args.image_root,
                                 **labels)
    else:
        train_ann, train_img, val_ann, val_img = coco_paths(args)
        train = CocoMultiLabel(train_ann, train_img, keep_empty=args.keep_empty)
        val = CocoMultiLabel(val_ann, val_img, keep_empty=True)  # every val image counts
    if train.label_names != val.label_names:
        raise UsageError("training and validation label names differ: "
                         f"{train.label_names[:5]}... vs {val.label_names[:5]}...")
    return train, val


def make_demo_data(args, is_main: bool) -> None:
    root = os.path.join(args.output, "data")
    spec = dict(num_train=args.demo_train, num_val=args.demo_val, num_labels=args.demo_labels,
                image_size=args.img_size, seed=args.seed)
    marker = os.path.join(root, "demo.json")
    if is_main:
        try:
            with open(marker) as f:
                same = json.load(f) == spec
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(root, ignore_errors=True)
            make_synthetic_coco(root, **spec)
            with open(marker, "w") as f:
                json.dump(spec, f)
    barrier()
    args.train_ann = os.path.join(root, "annotations", "instances_train2017.json")
    args.val_ann = os.path.join(root, "annotations", "instances_val2017.json")
    args.train_images = os.path.join(root, "train2017")
    args.val_images = os.path.join(root, "val2017")


def label_graph(train_set, out_dir: str, is_main: bool) -> LabelGraph:
    """ML-AGCN's A from the training labels, cached as ``<output>/label_graph.pt``."""
    path = os.path.join(out_dir, "label_graph.pt")
    if os.path.isfile(path):
        try:
            graph = LabelGraph.load(path)
            if graph.label_names == list(train_set.label_names):
                if is_main:
                    _print(f"Label graph: reusing {path}")
                return graph
            if is_main:
                _print(f"Label graph: {path} has other label names; recomputing")
        except Exception as e:  # a damaged cache is only a cache
            if is_main:
                _print(f"Label graph: cannot read {path} ({e}); recomputing")
    graph = LabelGraph.from_labels(train_set.labels, train_set.label_names)
    if is_main:
        with atomic_write(path) as f:
            graph.save(f)
    return graph


# ---------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def eval_data_config(model, img_size: int) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model.backbone)
    return dict(input_size=(3, img_size, img_size), mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bilinear"),
                crop_pct=1.0, crop_mode="squash")


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _write_log(path: str, history: list[dict]) -> None:
    with atomic_write(path, "w") as f:
        for r in history:
            f.write(json.dumps(_json_safe(r)) + "\n")


def _table_rows(metrics: dict[str, dict], params: dict[str, int] | None = None):
    rows = {}
    for name, m in metrics.items():
        row = dict(m)
        if params is not None:
            row["Params (M)"] = params[name] / 1e6
        rows[name] = row
    return rows


# ---------------------------------------------------------------------------------------
# Evaluate a checkpoint
# ---------------------------------------------------------------------------------------


def run_evaluate(args, explicit: set[str], info) -> int:
    with setup_errors():
        state = load_checkpoint(args.evaluate)
    saved = state.get("args", {})
    if not any(f in explicit for f in DATA_FLAGS):
        for f in (*DATA_FLAGS, "year"):  # evaluate on the data it was trained with
            setattr(args, f, saved.get(f))
        if not any(getattr(args, f) for f in DATA_FLAGS):
            raise UsageError(f"'{args.evaluate}' records no data paths; pass --val-ann/"
                             f"--val-images (and train ones), --data or --val-list")
    with setup_errors():
        _, val_set = build_datasets(args)
    if list(val_set.label_names) != list(state["label_names"]):
        raise UsageError(f"the validation labels differ from the checkpoint's "
                         f"{len(state['label_names'])} labels")
    cfg = state["config"]["data_config"]
    val_set.transform = build_transforms(cfg, img_size=cfg["input_size"][-1], train=False)

    models, params = {}, {}
    has_ema = state.get("ema") is not None
    for name, use_ema in (("ML-AGCN EMA", True), ("ML-AGCN", False)) if has_ema else \
            (("ML-AGCN", False),):
        m, _ = model_from_checkpoint(state, use_ema=use_ema)
        models[name] = m.to(info.device)
        params[name] = count_parameters(m)
    amp_dtype, _ = resolve_amp(args.amp, info.device)
    channels_last = info.device.type == "cuda" if args.channels_last is None \
        else args.channels_last
    if channels_last:
        for m in models.values():
            m.to(memory_format=torch.channels_last)
    loader = build_eval_loader(val_set, args.eval_batch_size or args.batch_size, info.rank,
                               info.world_size, args.workers,
                               pin_memory=bool(args.pin_memory if args.pin_memory is not None
                                               else info.device.type == "cuda"),
                               persistent_workers=False, prefetch_factor=args.prefetch_factor)
    results = evaluate(models, loader, info.device, num_labels=len(val_set.label_names),
                       amp_dtype=amp_dtype, channels_last=channels_last,
                       threshold=args.threshold, show_progress=info.is_main and not
                       args.no_progress)
    if info.is_main:
        _print(f"Checkpoint {args.evaluate} (epoch {state.get('epoch')}), "
               f"{results[next(iter(results))]['num_images']} validation images, "
               f"threshold {args.threshold}")
        _print(format_table(_table_rows(results, params), TABLE1_COLUMNS))
        if "output" in explicit:
            os.makedirs(args.output, exist_ok=True)
            out = os.path.join(args.output, "eval.json")
            with open(out, "w") as f:
                json.dump(_json_safe({"checkpoint": args.evaluate, "params": params,
                                      "metrics": results}), f, indent=1)
            _print(f"Wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------


def restore_args(args, saved: dict, explicit: set[str], say) -> None:
    """A resumed run takes every flag it was not given from the checkpoint. Of the flags it
    was given, runtime ones (workers, paths, --epochs, ...) win; recipe ones are ignored
    with a note, so that the run continues the same trajectory."""
    new_data = any(f in explicit for f in DATA_FLAGS)
    ignored = []
    for k, v in saved.items():
        if k in ("resume", "evaluate", "output"):
            continue
        if k in DATA_FLAGS or k == "year":
            if not new_data:
                setattr(args, k, v)
            continue
        if k in explicit:
            if k not in RUNTIME_FLAGS and getattr(args, k, v) != v:
                ignored.append(k)
            else:
                continue
        setattr(args, k, v)
    if ignored:
        say("Note: a resumed run keeps the checkpoint's recipe; ignoring "
            + ", ".join(f"--{k.replace('_', '-')}" for k in ignored))


def run_training(args, explicit: set[str], info) -> int:
    say = _print if info.is_main else (lambda *a, **k: None)
    resume = None
    if args.resume:
        path = os.path.join(args.output, "last.pth") if args.resume == "auto" else args.resume
        if args.resume == "auto" and not os.path.isfile(path):
            say(f"--resume auto: no {path} yet; starting from scratch")
        else:
            with setup_errors():
                resume = load_checkpoint(path)
            restore_args(args, resume.get("args", {}), explicit, say)
            if args.epochs > args.sched_epochs:
                raise UsageError(f"--epochs {args.epochs} exceeds the {args.sched_epochs} "
                                 f"epochs the checkpoint's OneCycle schedule spans")
            say(f"Resuming from {path}: epoch {resume['epoch']}, step {resume.get('step', 0)}")
    if args.sched_epochs is None:
        args.sched_epochs = args.epochs
    if args.sched_epochs < args.epochs:
        raise UsageError(f"--sched-epochs ({args.sched_epochs}) must be >= --epochs "
                         f"({args.epochs})")

    demo = args.demo
    if demo:
        make_demo_data(args, info.is_main)
        say("=" * 78 + "\nDEMO on a small SYNTHETIC dataset (coloured shapes), "
            f"{args.model} at {args.img_size}px on {info.device.type}; its numbers say "
            "nothing about COCO.\nPass --data (or --train-ann ...) to train on real data.\n"
            + "=" * 78)
    elif not args.pretrained and resume is None:
        say("Note: no --pretrained weights: the backbone starts from random initialisation "
            "and will not reach the paper's numbers (ML-AGCN fine-tunes an ImageNet-"
            "pretrained TResNet-M). Pass --pretrained PATH with a local timm checkpoint.")

    with setup_errors():
        train_set, val_set = build_datasets(args)
    names = list(train_set.label_names)
    say(f"Data: {len(train_set)} training / {len(val_set)} validation images, "
        f"{len(names)} labels")

    if resume is not None:
        if list(resume["label_names"]) != names:
            raise UsageError("the training labels differ from the resumed checkpoint's")
        adj, node_features = resume["adj"], resume["node_features"]
    else:
        adj = label_graph(train_set, args.output, info.is_main).adjacency()
        with setup_errors():
            node_features = (load_node_features(args.node_features, len(names))
                             if args.node_features else None)

    seed_everything(derive_seed(args.seed, 2**31))  # model init, same on every rank
    head_kwargs = {}
    if args.no_attention:
        head_kwargs["attention"] = False
    if args.no_similarity:
        head_kwargs["similarity"] = False
    hidden = [args.hidden] * (args.num_layers - 1)
    with setup_errors():
        model = create_model(args.model, len(names), adj, num_layers=args.num_layers,
                             hidden_channels=hidden, node_features=node_features,
                             pretrained=None if resume is not None else args.pretrained,
                             head_kwargs=head_kwargs)
    data_cfg = eval_data_config(model, args.img_size)
    config = model_config(args.model, len(names), args.num_layers, hidden,
                          head_kwargs=head_kwargs, data_config=data_cfg)
    randaug = None if str(args.randaugment).lower() in ("none", "") else args.randaugment
    train_set.transform = build_transforms(data_cfg, args.img_size, train=True,
                                           randaugment=randaug, cutout=args.cutout)
    val_set.transform = build_transforms(data_cfg, args.img_size, train=False)

    device = info.device
    amp_dtype, use_scaler = resolve_amp(args.amp, device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    pin = device.type == "cuda" if args.pin_memory is None else args.pin_memory
    if info.distributed and args.sync_bn:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            say("Note: --sync-bn needs CUDA; ignored on CPU")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    say(f"Model: ML-AGCN on {args.model}, {args.num_layers} graph layer(s), "
        f"{count_parameters(model) / 1e6:.2f}M parameters; AMP "
        f"{amp_dtype if amp_dtype else 'off'}; {info.world_size} process(es) on {device.type}")

    ema = None
    if args.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=args.ema_decay)
    if args.compile_head:  # after the EMA copy: compiled functions do not deep-copy
        model.head.compile_classifiers()
    optimizer = torch.optim.Adam(model.param_groups(args.weight_decay), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    train_loader = build_train_loader(
        train_set, args.batch_size, args.seed, info.rank, info.world_size, args.workers,
        pin_memory=pin, persistent_workers=args.persistent_workers,
        prefetch_factor=args.prefetch_factor)
    val_loader = build_eval_loader(
        val_set, args.eval_batch_size or args.batch_size, info.rank, info.world_size,
        args.workers, pin_memory=pin, persistent_workers=args.persistent_workers,
        prefetch_factor=args.prefetch_factor)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UsageError("the training set yields no batch")
    total_steps = steps_per_epoch * args.sched_epochs
    pct_start = args.pct_start
    if math.isclose(pct_start * total_steps, 1.0):
        # OneCycleLR divides by zero when its warm-up ends exactly at step 0.
        pct_start = min(1.5 / total_steps, 0.99)
    if pct_start != args.pct_start and info.is_main:
        _print(f"note: --pct-start raised to {pct_start:.3g}: {total_steps} steps in all")
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, steps_per_epoch=steps_per_epoch, epochs=args.sched_epochs,
        pct_start=pct_start)

    start_epoch, start_step, global_step = 0, 0, 0
    history: list[dict] = []
    best = {"mAP": -math.inf, "epoch": None, "source": None}
    progress: dict = {}
    if resume is not None:
        load_training_state(resume, model, optimizer, scheduler, scaler, ema, rank=info.rank)
        start_epoch, start_step = resume["epoch"], resume.get("step", 0)
        global_step = resume.get("global_step", 0)
        history, best = list(resume.get("history", [])), dict(resume["best"])
        progress = resume.get("epoch_progress") or {}
    if info.is_main:
        _write_log(os.path.join(args.output, "log.jsonl"), history)  # consistent with ckpt

    ddp_model = model
    if info.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    criterion = asymmetric_loss(args.gamma_neg, args.gamma_pos, args.clip)
    eval_criterion = asymmetric_loss(args.gamma_neg, args.gamma_pos, args.clip,
                                     reduction="none")
    eval_models = {"model": model, **({"EMA": ema.module} if ema is not None else {})}

    def checkpoint_state(epoch: int, step: int, epoch_progress: dict | None) -> dict | None:
        rng = all_gather_object(capture_rng_state())  # collective: every rank calls
        if not info.is_main:
            return None
        return dict(
            config=config, label_names=names, adj=adj.cpu(),
            node_features=None if node_features is None else node_features.cpu(),
            model=model.state_dict(), ema=ema.module.state_dict() if ema else None,
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler else None,
            epoch=epoch, step=step, epoch_progress=epoch_progress, global_step=global_step,
            best=best, history=history, rng=rng, args=vars(args))

    last_path = os.path.join(args.output, "last.pth")
    best_path = os.path.join(args.output, "best.pth")
    say(f"Output: {args.output}")
    with StopSignal() as stop:
        for epoch in range(start_epoch, args.epochs):
            skip = start_step if epoch == start_epoch else 0
            train_loader.sampler.set_epoch(epoch, skip=skip * args.batch_size)
            seed_everything(derive_seed(args.seed, epoch, info.rank, skip))
            result = train_one_epoch(
                ddp_model, train_loader, criterion, optimizer, scheduler, device, epoch + 1,
                scaler=scaler, ema=ema, amp_dtype=amp_dtype, channels_last=channels_last,
                start_step=skip, progress=progress if skip else None,
                global_step=global_step, log_interval=args.log_interval, stop=stop,
                reduce_max=all_reduce_max if info.distributed else None,
                reduce_sums=all_reduce_sum if info.distributed else None,
                input_size=(3, args.img_size, args.img_size),
                show_progress=info.is_main and not args.no_progress)
            global_step += result.steps - skip
            progress = {}
            if result.interrupted:
                state = checkpoint_state(epoch, result.steps, result.progress)
                if info.is_main:
                    save_checkpoint(state, last_path)
                    say(f"Stopped at epoch {epoch + 1}, step {result.steps}/{steps_per_epoch}; "
                        f"wrote {last_path}. Continue with --resume {last_path}")
                return 128 + (stop.signum or 15)
            if result.skipped_batches:
                say(f"Warning: {result.skipped_batches} training batch(es) had no readable "
                    f"image and were skipped")

            results = evaluate(eval_models, val_loader, device, num_labels=len(names),
                               amp_dtype=amp_dtype, channels_last=channels_last,
                               threshold=args.threshold, criterion=eval_criterion,
                               show_progress=info.is_main and not args.no_progress,
                               desc=f"eval {epoch + 1}")
            m, e = results["model"], results.get("EMA")
            candidates = {"model": m["mAP"], **({"ema": e["mAP"]} if e else {})}
            source = max(candidates, key=lambda k: -math.inf if math.isnan(candidates[k])
                         else candidates[k])
            is_best = not math.isnan(candidates[source]) and candidates[source] > best["mAP"]
            if is_best:
                best = {"mAP": candidates[source], "epoch": epoch + 1, "source": source}
            record = {
                "epoch": epoch + 1, "train_loss": result.loss, "val_loss": m["loss"],
                "val_loss_ema": e["loss"] if e else None, "mAP": m["mAP"],
                "mAP_ema": e["mAP"] if e else None, "lr": optimizer.param_groups[0]["lr"],
                "train_images_per_s": result.images / max(result.seconds, 1e-9),
                "epoch_seconds": result.seconds, "best_mAP": best["mAP"],
                "best_epoch": best["epoch"], "model": m, "ema": e}
            history.append(record)

            state = checkpoint_state(epoch + 1, 0, None)
            if info.is_main:
                save_checkpoint(state, last_path)
                if is_best:
                    if source == "model" and ema is not None:
                        # model_from_checkpoint prefers "ema": leave it out of best.pth so
                        # the best weights load by default; keep it for a resume.
                        state = {**state, "ema": None, "ema_resume": state["ema"]}
                    save_checkpoint(state, best_path)
                with open(os.path.join(args.output, "log.jsonl"), "a") as f:
                    f.write(json.dumps(_json_safe(record)) + "\n")
                say(f"\nEpoch {epoch + 1}/{args.epochs}: train loss {result.loss:.4f}, "
                    f"val loss {m['loss']:.4f}, {record['train_images_per_s']:.1f} img/s, "
                    f"lr {record['lr']:.3g}, best mAP {best['mAP']:.2f} "
                    f"(epoch {best['epoch']}, {best['source']})")
                say(format_table({k: v for k, v in results.items()}))
            requested = stop.requested
            if info.distributed:
                requested = all_reduce_max(float(requested)) > 0
            if requested:
                say(f"Stopped after epoch {epoch + 1}; continue with --resume {last_path}")
                return 128 + (stop.signum or 15)

    if info.is_main:
        plots = plot_curves(os.path.join(args.output, "log.jsonl"))
        if history:
            last = history[-1]
            rows = {"model": last["model"], **({"EMA": last["ema"]} if last["ema"] else {})}
            say(f"\nFinal (epoch {last['epoch']}):")
            say(format_table(rows))
            say(f"Best mAP {best['mAP']:.2f} at epoch {best['epoch']} ({best['source']}); "
                f"checkpoints {last_path}, {best_path}")
        say(f"Log {os.path.join(args.output, 'log.jsonl')}; plots {', '.join(plots)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    explicit = explicit_flags(parser, argv)
    # No data flag: the synthetic demo. (A resumed run takes its data from the checkpoint.)
    demo = not any(f in explicit for f in DATA_FLAGS) and "evaluate" not in explicit
    if demo:
        parser.set_defaults(**DEMO_DEFAULTS)
    args = parser.parse_args(argv)
    if args.evaluate and args.resume:
        parser.error("--evaluate and --resume exclude each other")
    if args.resume == "auto" and args.output is None:
        parser.error("--resume auto needs --output (it resumes <output>/last.pth)")
    if args.resume and args.resume != "auto" and args.output is None:
        args.output = os.path.dirname(os.path.abspath(args.resume))

    info = init_distributed(args.device)
    try:
        if info.distributed:
            # Ranks may disagree on a timestamp: rank 0's output folder wins.
            args.output = all_gather_object(args.output)[0]
        if args.evaluate:
            return run_evaluate(args, explicit, info)
        if args.output is None:
            args.output = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
            if info.distributed:
                args.output = all_gather_object(args.output)[0]
        if info.is_main:
            os.makedirs(args.output, exist_ok=True)
        barrier()
        args.demo = demo
        return run_training(args, explicit, info)
    except UsageError as e:
        if info.is_main:
            print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLossError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
