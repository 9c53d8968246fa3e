"""Train or evaluate ML-AGCN on MS-COCO (or any COCO-format or list-file multi-label data).

Demo (no data needed; about two minutes on two CPU cores)::

    python examples/coco_train.py

COCO 2014 with the paper's recipe (TResNet-M 448, ASL, Adam 1e-4, OneCycle, EMA)::

    torchrun --nproc_per_node=8 examples/coco_train.py --data /data/coco \\
        --pretrained tresnet_m_in21k.pth --output runs/coco

Resume (``auto`` = ``<output>/last.pth``), evaluate a checkpoint, rerun a configuration::

    python examples/coco_train.py --resume auto --output runs/coco
    python examples/coco_train.py --evaluate runs/coco/best.pth
    python examples/coco_train.py --config runs/coco/config.yaml --output runs/coco2

The paper's baselines are recipes of the same harness (``--recipe ml-agcn`` (default),
``iml-gcn``, ``ml-gcn``, ``asl``; :mod:`agcn_pyg.train.recipes`: sources and assumptions)::

    python examples/coco_train.py --data /data/coco --recipe ml-gcn --num-layers 1

See ``examples/README.md`` for every flag and what the files in ``--output`` hold. The
pieces are in :mod:`agcn_pyg.train`; this script parses arguments and wires them.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the slow imports: PyG warning off, Ctrl-C one line
    try:
        import _startup  # noqa: F401  (examples/_startup.py, next to this script)
    except ImportError:  # run as a module (python -m examples.predict): all but that
        pass

import argparse
import functools
import os
import sys
import time

import torch

from agcn_pyg import asymmetric_loss, build_transforms, count_parameters, train
from agcn_pyg.data.label_graph import ADJACENCY_KINDS, DEFAULT_ADJACENCY
from agcn_pyg.data.transforms import squash_data_config
from agcn_pyg.train import recipes
from agcn_pyg.train.checkpoint import CheckpointWriteError, ModelSpec, load_checkpoint
from agcn_pyg.train.datasets import SPARSE_GRAPH_MIN_LABELS
from agcn_pyg.train.distributed import all_gather_object, cleanup, init_distributed, on_main
from agcn_pyg.train.metrics import TABLE_COLUMNS, format_table, threshold_rows

DATA_FLAGS = tuple(f for f in train.DataConfig.__dataclass_fields__
                   if f not in ("year", "keep_empty"))
# Flags a resumed run may change; every other one is taken from the checkpoint, since it
# shapes the training trajectory.
RUNTIME_FLAGS = {*DATA_FLAGS, "year", "epochs", "workers", "pin_memory", "persistent_workers",
                 "prefetch_factor", "log_interval", "no_progress", "output", "resume",
                 "evaluate", "device", "eval_batch_size", "compile_head", "tensorboard",
                 "checkpoint_hist"}
# What the demo changes, unless given.
DEMO_DEFAULTS = dict(model="resnet10t", img_size=64, epochs=12, batch_size=32, lr=3e-4,
                     ema_decay=0.98, amp="off", workers=2, log_interval=5)
NOT_RESUMED = ("config", "resume", "evaluate", "overwrite")  # not in a checkpoint's run_config
NOT_SAVED = (*NOT_RESUMED, "output", "demo")  # nor in config.yaml
POS, NONNEG, NONNEG_F = train.bounded(int, 1), train.bounded(int, 0), train.bounded(float, 0.0)
FRACTION, PROB = train.bounded(float, 0, 1, high_open=True), train.bounded(float, 0, 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or evaluate ML-AGCN (multi-label image classification).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Without data flags the script trains on a synthetic demo set and changes "
        "these defaults: " + " ".join(f"--{k.replace('_', '-')} {v}"
                                      for k, v in DEMO_DEFAULTS.items()))
    Bool = argparse.BooleanOptionalAction
    p.add_argument("--config", help="YAML file of flag: value defaults (e.g. a run's config.yaml)")
    g = p.add_argument_group("data (COCO format; none given = synthetic demo)").add_argument
    g("--data", help="COCO root holding train2014/ val2014/ annotations/ (or 2017)")
    g("--year", choices=("auto", "2014", "2017"), default="auto", help="release under --data")
    for split in ("train", "val"):
        g(f"--{split}-ann", help=f"COCO-format instances JSON ({split})")
        g(f"--{split}-images", help=f"image folder of --{split}-ann")
    g("--keep-empty", action="store_true", help="keep unlabelled training images")
    g = p.add_argument_group("data (list files, e.g. VG-500)").add_argument
    g("--train-list", help="'path label label ...' lines for training")
    g("--val-list", help="the same for validation")
    g("--image-root", help="folder the list paths are relative to")
    g("--val-image-root", help="for --val-list (default: --image-root)")
    g("--label-names", help="label names, .txt (one a line) or .json")
    g("--image-labels", help="JSON {image: [label indices]} (SSGRL's VG-500)")
    g("--num-labels", type=POS, help="labels without --label-names (VG-500: 500)")
    g = p.add_argument_group("demo").add_argument
    g("--demo-train", type=POS, default=1000, help="synthetic training images")
    g("--demo-val", type=POS, default=161, help="synthetic validation images")
    g("--demo-labels", type=POS, default=10, help="synthetic labels")
    g = p.add_argument_group("model (--recipe sets these; a flag given overrides it)").add_argument
    g("--recipe", choices=tuple(recipes.RECIPES), default="ml-agcn",
      help="the paper's systems (README 'Paper recipes'): backbone, head, A, node features, "
      "graphs")
    g("--model", default="tresnet_m", help="timm backbone")  # ml-gcn's recipe: resnet101
    g("--head", choices=recipes.HEADS, help="graph layers, or timm's linear classifier (asl)")
    g("--graph", choices=recipes.GRAPHS, help="eq. 3's matrices (Table 3); ml-agcn: A+B+C")
    g("--bias", action=Bool, default=None, help="bias in the graph layers (ml-gcn: none)")
    g("--global-pool", help="timm pooling of the backbone (ml-gcn: max)")
    g("--pretrained", help="local timm checkpoint of the backbone")
    g("--img-size", type=POS, default=448, help="square input size")
    g("--num-layers", type=POS, default=2, help="graph layers")
    g("--hidden", type=POS, default=1024, help="hidden graph channels")
    g("--node-features", help="onehot, gaussian:D (fixed random, ml-gcn: gaussian:300 in "
      "place of GloVe) or a .npy/.pt [N, d] file")
    g("--adj-variant", choices=ADJACENCY_KINDS, default=DEFAULT_ADJACENCY,
      help="reading of the label graph A (README 'Fidelity'): normalized = D P^T D as "
      "ML-GCN's gen_adj, cooccurrence = raw P(j|i), row_normalized, mlgcn = thresholded "
      "(iml-gcn and ml-gcn recipes: mlgcn)")
    g("--label-graph", choices=("auto", "dense", "sparse"), default="auto",
      help="sparse: counts and A as sparse matrices, the layers on the complete path (README "
      f"'Label graphs of any size'); auto: sparse from {SPARSE_GRAPH_MIN_LABELS} labels on")
    g("--no-attention", action="store_true", help="ablation: drop B (eq. 4-6)")
    g("--no-similarity", action="store_true", help="ablation: drop C (eq. 7)")
    g("--drop-path", type=FRACTION, default=0.0, help="backbone drop-path rate")
    g = p.add_argument_group("recipe (ASL's: Adam + OneCycle; timm's optimizers and schedules)")
    g = g.add_argument
    g("--epochs", type=POS, default=40, help="epochs to train")
    g("--sched-epochs", type=POS, help="schedule length (default --epochs; ASL: 80, stop at 40)")
    g("--batch-size", type=POS, default=64, help="per process")
    g("--eval-batch-size", type=POS, help="default --batch-size")
    g("--grad-accum-steps", type=POS, default=1, help="batches per optimizer update")
    g("--opt", default="adam", help="timm optimizer name")
    g("--lr", type=train.bounded(float, 0, low_open=True), default=1e-4, help="peak lr")
    g("--weight-decay", type=NONNEG_F, default=1e-4, help="none on biases and norms")
    g("--momentum", type=PROB, default=0.9, help="for SGD-like --opt")
    g("--sched", default="onecycle", help="onecycle or a timm schedule (cosine, step, ...)")
    g("--pct-start", type=train.bounded(float, 0, 1, True, True), default=0.2,
      help="OneCycle warm-up fraction")
    g("--warmup-epochs", type=NONNEG_F, default=0.0, help="(onecycle: replaces --pct-start)")
    g("--warmup-lr", type=NONNEG_F, default=1e-5, help="timm schedules' first lr")
    g("--min-lr", type=NONNEG_F, default=0.0, help="timm schedules' last lr")
    g("--clip-grad", type=train.bounded(float, 0, low_open=True), help="max gradient norm")
    g("--clip-mode", choices=("norm", "value", "agc"), default="norm", help="timm's")
    g("--gamma-neg", type=NONNEG_F, default=4.0, help="ASL focusing of negatives")
    g("--gamma-pos", type=NONNEG_F, default=0.0, help="ASL focusing of positives")
    g("--clip", type=FRACTION, default=0.05, help="ASL probability margin")
    g("--ema-decay", type=FRACTION, default=0.9997, help="0 disables the EMA")
    g("--randaugment", default="rand-m9-mstd0.5", help="timm string or 'none'")
    g("--cutout", type=PROB, default=0.5, help="Cutout probability")
    g("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
      help="auto: bf16 on GPUs that have it, else fp16 + GradScaler; off on CPU")
    g("--channels-last", action=Bool, default=None, help="default: on CUDA")
    g("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (CUDA)")
    g("--compile-head", action=Bool, default=None,
      help="torch.compile the graph layers; default: as CUDA graphs on one GPU")
    g("--threshold", type=PROB, default=0.5, help="for CP/CR/CF1/OP/OR/OF1")
    g("--seed", type=NONNEG, default=0)
    g = p.add_argument_group("runtime").add_argument
    g("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    workers = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    g("--workers", type=NONNEG, default=max(1, min(8, workers)),
      help="DataLoader workers per process (cores / local processes, at most 8)")
    g("--pin-memory", action=Bool, default=None, help="default: on CUDA")
    g("--persistent-workers", action=Bool, default=True, help="keep workers across epochs")
    g("--prefetch-factor", type=POS, default=2, help="batches per worker")
    g("--output", help="run folder (default runs/<timestamp>)")
    g("--overwrite", action="store_true", help="replace a run already in --output")
    g("--resume", help="checkpoint to continue, or 'auto' = <output>/last.pth")
    g("--evaluate", metavar="CKPT", help="only evaluate this checkpoint")
    g("--checkpoint-hist", type=POS, default=1, help="keep the K best epochs' weights too")
    g("--tensorboard", action=Bool, default=True, help="when TensorBoard is installed")
    g("--log-interval", type=POS, default=20, help="updates between progress/NaN/signal checks")
    g("--no-progress", action="store_true", help="no progress bar or lines")
    return p


def loop_config(args, info, input_size=None) -> train.LoopConfig:
    channels_last = info.device.type == "cuda" if args.channels_last is None \
        else args.channels_last
    return train.LoopConfig(
        info.device, train.resolve_amp(args.amp, info.device)[0], channels_last,
        args.log_interval, args.grad_accum_steps, args.clip_grad, args.clip_mode, input_size,
        info.is_main and not args.no_progress, info.distributed)


def loader_kwargs(args, info) -> dict:
    pin = info.device.type == "cuda" if args.pin_memory is None else args.pin_memory
    return dict(rank=info.rank, world_size=info.world_size, workers=args.workers,
                pin_memory=pin, persistent_workers=args.persistent_workers,
                prefetch_factor=args.prefetch_factor)


def run_evaluate(args, explicit: set[str], info, say) -> int:
    state = load_checkpoint(args.evaluate)
    if not any(f in explicit for f in DATA_FLAGS):  # the data it was trained with
        for f in (*DATA_FLAGS, "year"):
            setattr(args, f, state.get("run_config", {}).get(f))
        if not any(getattr(args, f) for f in DATA_FLAGS):
            raise ValueError(f"'{args.evaluate}' records no data paths; pass --val-ann/"
                             f"--val-images (and train ones), --data or --val-list")
    _, val_set = train.build_datasets(train.DataConfig.from_mapping(vars(args)))
    results, params = train.evaluate_checkpoint(
        state, val_set, loop_config(args, info), args.eval_batch_size or args.batch_size,
        args.threshold, **{**loader_kwargs(args, info), "persistent_workers": False})
    graph = ("none, linear head" if state["config"].get("head") == "linear"
             else ModelSpec.from_checkpoint(state).adjacency_kind)
    say(f"Checkpoint {args.evaluate} (epoch {state.get('epoch')}, label graph {graph}), "
        f"{results[next(iter(results))]['num_images']} validation images, "
        f"threshold {args.threshold}; the 'tuned' rows use the threshold that maximises CF1 "
        f"on these same images (an optimistic bound, not a held-out result)")
    rows = {}
    for k, m in results.items():
        rows.update(threshold_rows(k, {**m, "Params (M)": params[k] / 1e6}))
    say(format_table(rows, ("Params (M)", *TABLE_COLUMNS)))
    if "output" in explicit and info.is_main:
        say(f"Wrote {train.RunFolder(args.output).save_eval(args.evaluate, params, results)}")
    return 0


def prepare_run(args, explicit: set[str], info, say):
    """The run folder and the checkpoint to resume (``None``), ``args`` completed."""
    folder, resume = train.RunFolder(args.output), None
    path = folder.last if args.resume == "auto" else args.resume
    if path and (args.resume != "auto" or os.path.isfile(path)):
        resume = load_checkpoint(path)
        if resume.get("kind") != "training":
            raise ValueError(f"--resume: '{path}' holds weights only; resume from a last.pth")
        given = [f"--{f.replace('_', '-')}" for f in DATA_FLAGS if f in explicit]
        if resume.get("run_config", {}).get("demo") and given:
            raise ValueError(f"--resume: '{path}' is a demo run on synthetic data and cannot "
                             f"continue on {' '.join(given)}; resume it without data flags, "
                             f"or train on that data with another --output")
        ignored = train.merge_resumed(args, resume.get("run_config", {}), explicit,
                                      (*DATA_FLAGS, "year", "keep_empty"), RUNTIME_FLAGS)
        if ignored:
            say("Note: a resumed run keeps the checkpoint's recipe; ignoring " + ", ".join(ignored))
        if args.epochs > args.sched_epochs:
            raise ValueError(f"--epochs {args.epochs} exceeds the {args.sched_epochs} "
                             f"epochs the checkpoint's schedule spans")
        say(f"Resuming from {path}: epoch {resume['epoch']}, step {resume.get('step', 0)}")
    elif path:
        say(f"--resume auto: no {path} yet; starting from scratch")
    args.sched_epochs = args.sched_epochs or args.epochs
    if args.sched_epochs < args.epochs:
        raise ValueError(f"--sched-epochs {args.sched_epochs} is less than --epochs {args.epochs}")
    on_main(folder.claim, resume is not None, args.overwrite)  # every rank stops if refused
    if args.demo:
        root = os.path.join(args.output, "data")
        spec = dict(num_train=args.demo_train, num_val=args.demo_val, image_size=args.img_size,
                    num_labels=args.demo_labels, seed=args.seed)
        on_main(train.make_demo_data, root, spec)
        paths = train.make_demo_data(root, spec, write=False)
        vars(args).update({k: v for k, v in vars(paths).items() if v is not None})
        say(train.demo_banner(args.model, args.img_size, info.device.type))
    elif not args.pretrained and resume is None:
        say("Note: no --pretrained weights: the backbone starts from random initialisation "
            "and will not reach the paper's numbers (ML-AGCN fine-tunes an ImageNet-"
            "pretrained TResNet-M). Pass --pretrained PATH with a local timm checkpoint.")
    return folder, resume


def build_model(args, explicit: set[str], train_set, resume, folder, info, say):
    """The model and its :class:`ModelSpec` (the resumed one, or one from the flags)."""
    names = list(train_set.label_names)
    if resume is not None and list(resume["label_names"]) != names:
        raise ValueError("the training labels differ from the resumed checkpoint's")
    train.seed_everything(train.derive_seed(args.seed, 2**31))  # same init on every rank
    if resume is not None:
        spec = ModelSpec.from_checkpoint(resume)  # its A, whatever today's default
        if spec.config.get("head") != "linear" and args.adj_variant != spec.adjacency_kind:
            if "adj_variant" in explicit:
                say(f"Note: a resumed run keeps the checkpoint's label graph "
                    f"({spec.adjacency_kind}); ignoring --adj-variant {args.adj_variant}")
            args.adj_variant = spec.adjacency_kind
        spec.config.setdefault("adjacency", spec.adjacency_kind)  # old ones: now recorded
        return spec.build(), spec
    graph = train.label_graph(train_set, folder.path, info.is_main, say, args.adj_variant,
                              {"auto": None, "dense": False, "sparse": True}[args.label_graph])
    spec = recipes.model_spec(args, names, graph)
    model = spec.build(pretrained=args.pretrained)
    config = spec.config
    config["data_config"] = squash_data_config(model, args.img_size)  # ASL's eval resize
    ModelSpec.set_data_config(model, config["data_config"])
    return model, spec


def build_training(model, args, info, updates_per_epoch: int):
    if info.distributed and args.sync_bn and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if loop_config(args, info).channels_last:
        model.to(memory_format=torch.channels_last)
    fields = train.RecipeConfig.__dataclass_fields__
    recipe = train.RecipeConfig(**{k: getattr(args, k) for k in fields})
    scaler = train.resolve_amp(args.amp, info.device)[1]
    parts = train.build_parts(model, recipe, updates_per_epoch, grad_scaler=scaler)
    if args.head != "graph":  # asl: timm's linear classifier, nothing to compile
        return parts
    if args.compile_head:  # after the EMA copy (no deep copy)
        model.head.compile_classifiers()
    elif args.compile_head is None and not info.distributed:
        model.head.capture_classifiers()  # CUDA graphs on a GPU, nothing on the CPU
    return parts


def setup_training(args, explicit: set[str], info, say) -> train.Trainer:
    folder, resume = prepare_run(args, explicit, info, say)
    train_set, val_set = train.build_datasets(train.DataConfig.from_mapping(vars(args)))
    say(f"Data: {len(train_set)} training / {len(val_set)} validation images, "
        f"{len(train_set.label_names)} labels")
    model, spec = build_model(args, explicit, train_set, resume, folder, info, say)
    randaug = None if str(args.randaugment).lower() in ("none", "") else args.randaugment
    data_config = spec.config["data_config"]
    train_set.transform = build_transforms(data_config, args.img_size, True,
                                           randaugment=randaug, cutout=args.cutout)
    val_set.transform = build_transforms(data_config, args.img_size, False)
    kw = loader_kwargs(args, info)
    train_loader = train.build_train_loader(train_set, args.batch_size, args.seed, **kw)
    val_loader = train.build_eval_loader(val_set, args.eval_batch_size or args.batch_size, **kw)
    updates = -(-len(train_loader) // args.grad_accum_steps)
    data = train.describe_data(train_set, val_set, updates, info.world_size)
    changed = resume is not None and train.data_changes(resume, data)
    if changed:  # the schedule's length and the image order depend on the data
        raise ValueError(f"--resume: {changed}; resume with the data it was trained on, or "
                         f"start a new run with another --output")
    train.first_readable(train_set, "training")  # fail now, not after an epoch
    train.first_readable(val_set, "validation")
    parts = build_training(model, args, info, updates)
    say(f"Model: {recipes.describe(args)}, "
        f"{count_parameters(parts.model) / 1e6:.2f}M parameters; AMP {args.amp}; "
        f"{info.world_size} process(es) on {info.device.type}")
    losses = [asymmetric_loss(args.gamma_neg, args.gamma_pos, args.clip, reduction=r)
              for r in ("sum", "none")]
    run_config = {k: v for k, v in vars(args).items() if k not in NOT_RESUMED}
    trainer = train.Trainer(
        parts, spec, train_loader, val_loader, *losses,
        loop_config(args, info, (3, args.img_size, args.img_size)),
        train.FitConfig(args.epochs, args.seed, args.threshold, args.checkpoint_hist, info.rank),
        folder, run_config, say=say, tensorboard=args.tensorboard, data=data)
    if resume is not None:
        trainer.resume(resume)
    trainer.check_free_space()
    on_main(folder.save_config, {k: v for k, v in run_config.items() if k not in NOT_SAVED})
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, explicit = train.parse_args(build_parser, sys.argv[1:] if argv is None else argv)
    # No data flag: the synthetic demo. (A resumed run takes its data from the checkpoint.)
    args.demo = not any(f in explicit for f in DATA_FLAGS) and not args.evaluate
    try:
        recipes.apply_recipe(args, explicit)
    except ValueError as e:
        parser.error(str(e))
    if args.demo:
        vars(args).update({k: v for k, v in DEMO_DEFAULTS.items() if k not in explicit})
    if args.evaluate and args.resume:
        parser.error("--evaluate and --resume exclude each other")
    if args.resume == "auto" and args.output is None:
        parser.error("--resume auto needs --output (it resumes <output>/last.pth)")
    if args.resume and args.resume != "auto" and args.output is None:
        args.output = os.path.dirname(os.path.abspath(args.resume))
    args.output = args.output or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    info = init_distributed(args.device)
    say = functools.partial(print, flush=True) if info.is_main else (lambda *a, **k: None)
    run_lock = None
    try:
        args.output = all_gather_object(args.output)[0]  # rank 0's timestamp wins
        try:
            if args.evaluate:
                if "output" in explicit:
                    on_main(train.RunFolder(args.output).check_writable)
                return run_evaluate(args, explicit, info, say)
            run_lock = train.RunFolder(args.output)
            on_main(run_lock.lock)  # one run a folder: a second one stops before any write
            trainer = setup_training(args, explicit, info, say)
        except (FileNotFoundError, ValueError) as e:  # the library's one-line errors
            say(f"{parser.prog}: error: {e}", file=sys.stderr)
            return 2
        say(f"Output: {args.output}")
        return trainer.fit()
    except KeyboardInterrupt:  # Ctrl-C before the first epoch (or a second one during it)
        say(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except (CheckpointWriteError, train.NonFiniteLossError) as e:
        if info.is_main or isinstance(e, train.NonFiniteLossError):  # each rank names its NaN
            print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if run_lock is not None:
            run_lock.unlock()
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
