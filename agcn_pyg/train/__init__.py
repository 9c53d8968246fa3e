"""Training ML-AGCN as a library: the pieces ``examples/coco_train.py`` wires together.

==========================  ==============================================================
module                      concern
==========================  ==============================================================
:mod:`.seeding`             seeds and RNG states (a run is a function of seed and epoch)
:mod:`.loaders`             epoch-seeded data order and per-image augmentation seeds
:mod:`.datasets`            the data of a run (COCO / list files / demo), its label graph
:mod:`.recipe`              optimizer and schedule from timm's factories (Adam + OneCycle)
:mod:`.loop`                one training epoch (AMP, accumulation, clipping, EMA, NaN stop)
:mod:`.evaluation`          metrics of the model and its EMA, DDP-gathered
:mod:`.fit`                 the epoch loop: best model, checkpoints, logs, graceful stop
:mod:`.run_dir`             the run folder's guarantees (no overwrite, repair, free space)
:mod:`.logs`                progress lines, log.jsonl, summary.csv, TensorBoard
:mod:`.curves`              loss and mAP PNGs
:mod:`.signals`             SIGINT / SIGTERM as a flag
:mod:`.config`              --config YAML files, explicit flags, resumed configuration
==========================  ==============================================================

The checkpoint format itself lives in :mod:`agcn_pyg.train.checkpoint`; process groups in
:mod:`agcn_pyg.train.distributed`.
"""

from agcn_pyg.train.checkpoint import data_changes
from agcn_pyg.train.config import (
    bounded,
    config_file_argv,
    explicit_dests,
    merge_resumed,
    parse_args,
)
from agcn_pyg.train.datasets import (
    DataConfig,
    build_datasets,
    demo_banner,
    describe_data,
    label_graph,
    make_demo_data,
)
from agcn_pyg.train.evaluation import checkpoint_models, evaluate, evaluate_checkpoint
from agcn_pyg.train.fit import FitConfig, Trainer
from agcn_pyg.train.loaders import (
    EpochSampler,
    SeededDataset,
    build_eval_loader,
    build_train_loader,
    first_readable,
)
from agcn_pyg.train.logs import Progress, RunLogger, json_safe
from agcn_pyg.train.loop import (
    EpochResult,
    LoopConfig,
    NonFiniteLossError,
    resolve_amp,
    train_one_epoch,
)
from agcn_pyg.train.recipe import RecipeConfig, build_optimizer, build_parts, build_scheduler
from agcn_pyg.train.run_dir import RunFolder, RunFolderError
from agcn_pyg.train.seeding import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seed_everything,
)
from agcn_pyg.train.signals import StopSignal

__all__ = [
    "DataConfig",
    "EpochResult",
    "EpochSampler",
    "FitConfig",
    "LoopConfig",
    "NonFiniteLossError",
    "Progress",
    "RecipeConfig",
    "RunFolder",
    "RunFolderError",
    "RunLogger",
    "SeededDataset",
    "StopSignal",
    "Trainer",
    "bounded",
    "build_datasets",
    "build_eval_loader",
    "build_optimizer",
    "build_parts",
    "build_scheduler",
    "build_train_loader",
    "capture_rng_state",
    "checkpoint_models",
    "config_file_argv",
    "data_changes",
    "demo_banner",
    "derive_seed",
    "describe_data",
    "evaluate",
    "evaluate_checkpoint",
    "explicit_dests",
    "first_readable",
    "json_safe",
    "label_graph",
    "make_demo_data",
    "merge_resumed",
    "parse_args",
    "resolve_amp",
    "restore_rng_state",
    "seed_everything",
    "train_one_epoch",
]
