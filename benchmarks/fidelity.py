"""Which reading of ML-AGCN's A trains best, and does the head still need its initial rescale?

Trains the same small model once per (dataset, A variant, head init) and reports the first-step
logit scale, the mAP and the threshold metrics (at 0.5 and at the validation-tuned CF1
threshold). Two datasets, both built here with no download:

* ``demo`` — the synthetic COCO-format coloured shapes of ``examples/coco_train.py``'s demo
  (:func:`agcn_pyg.make_synthetic_coco`), trained with the demo's recipe: resnet10t at 64 px,
  ASL (4, 0, 0.05), Adam 3e-4 + OneCycle, EMA 0.98, RandAugment + Cutout.
* ``digits`` — real handwritten digits (scikit-learn's bundled ``load_digits``, 1,797 scans of
  8x8 px) pasted into 3x3 collages of 32 px, shown at 64 px, whose digit sets are correlated
  ("scenes" of digits that appear together, plus random extras), jittered, partly erased and
  noisy; the label set is the set of digits in the collage. Training and validation collages draw on
  disjoint digit scans. Same model and recipe, no augmentation.

Usage (about 1.5 to 3 minutes a run on 2 CPU cores)::

    python benchmarks/fidelity.py --datasets digits,demo --seeds 0 --out benchmarks/results/X

It writes ``fidelity.jsonl`` (one record per run, with the per-epoch history) and
``fidelity.md`` (the table the README quotes). No number is asserted anywhere: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env_info, int_list, markdown_table, str_list  # noqa: E402

from agcn_pyg import (  # noqa: E402
    CocoMultiLabel,
    LabelGraph,
    MultiLabelHead,
    asymmetric_loss,
    build_transforms,
    create_model,
    make_synthetic_coco,
    multilabel_metrics,
)

VARIANTS = ("normalized", "cooccurrence", "row_normalized")


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------

# Digits that tend to appear together (the label correlations a graph can use).
SCENES = ((0, 6, 8, 9), (1, 4, 7), (2, 3, 5), (3, 8, 9), (1, 2, 7))


class DigitCollages(Dataset):
    """``[3, 64, 64]`` float images (a 3x3 grid of jittered, noisy 8x8 scans, upsampled 2x)
    and ``[10]`` multi-hot targets."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images = images
        self.labels = targets
        self.label_names = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].expand(3, -1, -1), self.labels[i].float(), i


def digit_collages(num_train: int, num_val: int, seed: int, noise: float = 0.25):
    """Real scans (scikit-learn's ``load_digits``) in correlated 3x3 collages: a scene's
    digits each appear with probability 0.6, plus up to two random extras; every scan is
    placed with a random 0-2 px offset in its 10 px cell, one scan in three has a random 4x4
    patch erased, and Gaussian noise is added — so a digit is not always legible and its
    company is evidence."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(scans))
    split = int(0.6 * len(scans))
    pools = {"train": perm[:split], "val": perm[split:]}  # disjoint scans

    def make(n: int, pool: np.ndarray):
        by_digit = {d: pool[digits.target[pool] == d] for d in range(10)}
        images = torch.zeros(n, 1, 32, 32)
        targets = torch.zeros(n, 10, dtype=torch.bool)
        for k in range(n):
            scene = SCENES[rng.integers(len(SCENES))]
            chosen = [d for d in scene if rng.random() < 0.6]
            chosen += [int(d) for d in rng.integers(10, size=rng.integers(3))]
            if not chosen:
                chosen = [int(rng.choice(scene))]
            slots = rng.permutation(9)
            for d, slot in zip(chosen, slots, strict=False):
                scan = scans[rng.choice(by_digit[d])].clone()
                if rng.random() < 1 / 3:
                    r0, c0 = rng.integers(0, 5, size=2)
                    scan[r0: r0 + 4, c0: c0 + 4] = 0
                r, c = divmod(int(slot), 3)
                dr, dc = rng.integers(0, 3, size=2)
                top, left = 1 + 10 * r + dr, 1 + 10 * c + dc
                images[k, 0, top: top + 8, left: left + 8] = scan
                targets[k, d] = True
        images += noise * torch.from_numpy(rng.standard_normal(images.shape)).float()
        # 2x: resnet10t's stem divides by 4, an 8 px digit would shrink to 2 px.
        images = torch.nn.functional.interpolate(images, scale_factor=2, mode="bilinear")
        return DigitCollages(images, targets)

    return make(num_train, pools["train"]), make(num_val, pools["val"])


def demo_datasets(root: str, num_train: int, num_val: int, size: int, seed: int, model):
    paths = make_synthetic_coco(root, num_train=num_train, num_val=num_val, num_labels=10,
                                image_size=size, seed=seed)
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model.backbone)
    train = CocoMultiLabel(paths.train_ann_file, paths.train_image_dir,
                           transform=build_transforms(cfg, size, train=True))
    val = CocoMultiLabel(paths.val_ann_file, paths.val_image_dir,
                         transform=build_transforms(cfg, size, train=False))
    return train, val


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------


def _scores(model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for images, y, _ in loader:
            scores.append(torch.sigmoid(model(images)))
            targets.append(y)
    return torch.cat(scores), torch.cat(targets)


def run(dataset: str, variant: str, rescale: bool, seed: int, args, cache: dict) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    size = args.demo_size

    if dataset not in cache:
        probe = create_model("resnet10t", 10, torch.eye(10), num_layers=1)
        if dataset == "demo":
            root = args.data_dir or os.path.join(tempfile.gettempdir(), "agcn_fidelity_demo")
            cache[dataset] = demo_datasets(root, args.demo_train, args.demo_val, size, 0, probe)
        else:
            cache[dataset] = digit_collages(args.digits_train, args.digits_val, 0,
                                            args.digits_noise)
    train_set, val_set = cache[dataset]
    graph = LabelGraph.from_labels(train_set.labels, train_set.label_names)
    adj = graph.adjacency(variant)

    # Same seed, same weights; only the head's last-layer rescale differs.
    original = MultiLabelHead._match_linear_init
    if not rescale:
        MultiLabelHead._match_linear_init = lambda self: None
    try:
        torch.manual_seed(seed)
        model = create_model("resnet10t", graph.num_labels, adj, num_layers=2)
    finally:
        MultiLabelHead._match_linear_init = original
    ema = copy.deepcopy(model).eval()

    g = torch.Generator().manual_seed(seed)
    workers = args.workers if dataset == "demo" else 0  # digits are tensors in memory
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True, generator=g,
                              num_workers=workers, drop_last=True,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_set, batch_size=64, num_workers=workers)
    criterion = asymmetric_loss(4.0, 0.0, 0.05)
    optimizer = torch.optim.Adam(model.param_groups(1e-4), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(train_loader), pct_start=0.2)

    record = dict(dataset=dataset, variant=variant, rescale=rescale, seed=seed,
                  adj_row_sum_max=adj.sum(1).max().item(), history=[])
    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for images, y, _ in train_loader:
            logits = model(images)
            if step == 0:
                with torch.no_grad():
                    p = torch.sigmoid(logits)
                    record.update(
                        logit_rms_step0=logits.pow(2).mean().sqrt().item(),
                        logit_absmax_step0=logits.abs().max().item(),
                        saturated_step0=((p < 0.01) | (p > 0.99)).float().mean().item(),
                    )
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:
                record["head_grad_norm_step0"] = torch.norm(torch.stack(
                    [p.grad.norm() for p in model.head.parameters() if p.grad is not None]
                )).item()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # EMA of parameters and buffers, as timm's ModelEmaV3
                for e, m in zip(ema.state_dict().values(), model.state_dict().values(),
                                strict=True):
                    if e.is_floating_point():
                        e.lerp_(m, 1 - args.ema_decay)
                    else:
                        e.copy_(m)
            total += loss.item()
            step += 1
        s, t = _scores(model, val_loader)
        se, _ = _scores(ema, val_loader)
        m, me = multilabel_metrics(s, t), multilabel_metrics(se, t, tune="CF1")
        record["history"].append(dict(epoch=epoch + 1, loss=total / len(train_loader),
                                      mAP=m["mAP"], mAP_ema=me["mAP"]))
        print(f"  {dataset} {variant} rescale={rescale} seed={seed} epoch {epoch + 1}: "
              f"loss {total / len(train_loader):.3f} mAP {m['mAP']:.2f} "
              f"EMA {me['mAP']:.2f}", flush=True)
    record["seconds"] = time.perf_counter() - start
    record["final_ema"] = me
    record["best_mAP"] = max(max(h["mAP"], h["mAP_ema"]) for h in record["history"])
    return record


# ---------------------------------------------------------------------------------------
# Initial logit scale on real COCO statistics (no images needed)
# ---------------------------------------------------------------------------------------


def load_mlgcn_adj(path: str) -> LabelGraph:
    """ML-GCN's ``data/coco/coco_adj.pkl`` (``{"adj": pair counts with a zero diagonal,
    "nums": label counts}``, numpy arrays) as a :class:`LabelGraph`. The unpickler accepts
    numpy arrays only."""
    import pickle

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] == "numpy" and name in (
                    "_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{name}")

    with open(path, "rb") as f:
        data = NumpyOnly(f, encoding="latin1").load()
    nums = torch.as_tensor(data["nums"]).long()
    return LabelGraph(torch.as_tensor(data["adj"]).long() + torch.diag(nums), nums)


def graph_stats(graph: LabelGraph) -> list[dict]:
    """Row sums (min, median, max, and the label of the max) and spectral radius of each
    variant of A."""
    rows = []
    for variant in VARIANTS:
        adj = graph.adjacency(variant).double()
        r = adj.sum(1)
        top = int(r.argmax())
        rows.append(dict(A=variant, row_sum_min=r.min().item(), row_sum_median=r.median().item(),
                         row_sum_max=r.max().item(),
                         max_row_label=graph.label_names[top] if graph.label_names else top,
                         spectral_radius=torch.linalg.eigvals(adj).abs().max().item()))
    return rows


def init_scale(graph: LabelGraph, in_features: int = 2048, seed: int = 0) -> list[dict]:
    """Initial logits of the paper's heads (1 and 2 layers, one-hot nodes) on pooled-ReLU-like
    features (uniform in [0, 1]), per A variant, with and without the head's rescale, next to
    a linear head's."""
    # Not `seed` itself: features drawn from the same stream as the weights would correlate.
    g = torch.Generator().manual_seed(seed + 12345)
    feats = torch.rand(64, in_features, generator=g)
    torch.manual_seed(seed)
    linear = torch.nn.Linear(in_features, graph.num_labels)
    rows = [dict(A="(linear head)", layers=1, rescale="-",
                 logit_rms=linear(feats).pow(2).mean().sqrt().item(),
                 logit_absmax=linear(feats).abs().max().item())]
    original = MultiLabelHead._match_linear_init
    for variant in (*VARIANTS, "zero"):  # "zero": A = 0, what B and C alone give
        adj = (torch.zeros(graph.num_labels, graph.num_labels) if variant == "zero"
               else graph.adjacency(variant))
        for hidden in ((), (1024,)):
            for rescale in (True, False):
                if not rescale:
                    MultiLabelHead._match_linear_init = lambda self: None
                try:
                    torch.manual_seed(seed)
                    head = MultiLabelHead(in_features, graph.num_labels, adj,
                                          hidden_channels=hidden)
                finally:
                    MultiLabelHead._match_linear_init = original
                with torch.no_grad():
                    logits = head(feats)
                rows.append(dict(A=variant, layers=len(hidden) + 1,
                                 rescale="yes" if rescale else "no",
                                 A_row_sums=f"{adj.sum(1).min():.2f}-{adj.sum(1).max():.2f}",
                                 logit_rms=logits.pow(2).mean().sqrt().item(),
                                 logit_absmax=logits.abs().max().item()))
    return rows


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def table(records: list[dict]) -> str:
    lines = [
        "| data | A | head rescale | seeds | A max row sum | step-0 logit RMS | step-0 max "
        "abs logit | step-0 head grad norm | mAP (EMA, last) | best mAP | CF1 @0.5 | CP/CR "
        "@0.5 | tuned thr | CF1 @tuned | CP/CR @tuned |",
        "|" + "---|" * 15,
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["variant"], r["rescale"]), []).append(r)

    def mean(rs, f):
        return sum(f(r) for r in rs) / len(rs)

    for (dataset, variant, rescale), rs in groups.items():
        fe = [r["final_ema"] for r in rs]
        mAPs = [f["mAP"] for f in fe]
        spread = f" ± {(max(mAPs) - min(mAPs)) / 2:.1f}" if len(rs) > 1 else ""
        lines.append(
            f"| {dataset} | {variant} | {'yes' if rescale else 'no'} | {len(rs)} | "
            f"{mean(rs, lambda r: r['adj_row_sum_max']):.2f} | "
            f"{mean(rs, lambda r: r['logit_rms_step0']):.3g} | "
            f"{mean(rs, lambda r: r['logit_absmax_step0']):.3g} | "
            f"{mean(rs, lambda r: r['head_grad_norm_step0']):.3g} | "
            f"{sum(mAPs) / len(mAPs):.1f}{spread} | {mean(rs, lambda r: r['best_mAP']):.1f} | "
            f"{mean(fe, lambda f: f['CF1']):.1f} | {mean(fe, lambda f: f['CP']):.0f}/"
            f"{mean(fe, lambda f: f['CR']):.0f} | {mean(fe, lambda f: f['threshold_tuned']):.2f}"
            f" | {mean(fe, lambda f: f['CF1_tuned']):.1f} | {mean(fe, lambda f: f['CP_tuned']):.0f}"
            f"/{mean(fe, lambda f: f['CR_tuned']):.0f} |")
    return "\n".join(lines)


def short_table(records: list[dict]) -> str:
    """The README's table: mean over seeds, the spread of mAP as half the range."""
    lines = ["| data | A | head rescale | seeds | step-0 logit RMS | mAP | CF1 / CP / CR @0.5 "
             "| tuned threshold | CF1 / CP / CR @tuned |", "|" + "---|" * 9]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["variant"], r["rescale"]), []).append(r)
    for (dataset, variant, rescale), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][0] != "demo", not kv[0][2],
                                            VARIANTS.index(kv[0][1]))):
        fe = [r["final_ema"] for r in rs]

        def mean(key, fe=fe):
            return sum(f[key] for f in fe) / len(fe)

        maps = [f["mAP"] for f in fe]
        spread = f" ± {(max(maps) - min(maps)) / 2:.1f}" if len(rs) > 1 else ""
        rms = sum(r["logit_rms_step0"] for r in rs) / len(rs)
        lines.append(
            f"| {dataset} | `{variant}` | {'yes' if rescale else 'no'} | {len(rs)} | "
            f"{rms:.2f} | {mean('mAP'):.1f}{spread} | {mean('CF1'):.1f} / {mean('CP'):.0f} / "
            f"{mean('CR'):.0f} | {mean('threshold_tuned'):.2f} | {mean('CF1_tuned'):.1f} / "
            f"{mean('CP_tuned'):.0f} / {mean('CR_tuned'):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", type=str_list, default=["digits", "demo"])
    p.add_argument("--variants", type=str_list, default=list(VARIANTS))
    p.add_argument("--rescale", type=str_list, default=["yes", "no"],
                   help="head init rescale (MultiLabelHead._match_linear_init): yes, no")
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ema-decay", type=float, default=0.98)
    p.add_argument("--demo-train", type=int, default=1000)
    p.add_argument("--demo-val", type=int, default=161)
    p.add_argument("--demo-size", type=int, default=64)
    p.add_argument("--digits-train", type=int, default=1000)
    p.add_argument("--digits-val", type=int, default=600)
    p.add_argument("--digits-noise", type=float, default=0.25)
    p.add_argument("--workers", type=int, default=1, help="for the demo's JPEGs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    p.add_argument("--coco-adj", help="ML-GCN's data/coco/coco_adj.pkl: only print the "
                   "initial logit scale of the paper's heads on COCO's real label graph")
    p.add_argument("--data-dir", help="where the demo images go (default: a temp folder)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "env.json"), "w") as f:
        json.dump({**env_info(torch.device("cpu")), "args": vars(args)}, f, indent=1)
    if args.coco_adj:
        graph = load_mlgcn_adj(args.coco_adj)
        rows = init_scale(graph)
        text = markdown_table(graph_stats(graph), ["A", "row_sum_min", "row_sum_median",
                                                   "row_sum_max", "max_row_label",
                                                   "spectral_radius"])
        text += "\n" + markdown_table(rows, ["A", "layers", "rescale", "A_row_sums",
                                             "logit_rms", "logit_absmax"])
        with open(os.path.join(args.out, "init_scale_coco.md"), "w") as f:
            f.write(text + "\n")
        print(text)
        return 0

    log = os.path.join(args.out, "fidelity.jsonl")
    records = []
    if os.path.isfile(log):  # resume: keep finished runs
        with open(log) as f:
            records = [json.loads(line) for line in f if line.strip()]
    done = {(r["dataset"], r["variant"], r["rescale"], r["seed"]) for r in records}
    cache: dict = {}
    for dataset in args.datasets:
        for seed in args.seeds:
            for variant in args.variants:
                for rescale in (r == "yes" for r in args.rescale):
                    if (dataset, variant, rescale, seed) in done:
                        continue
                    rec = run(dataset, variant, rescale, seed, args, cache)
                    records.append(rec)
                    with open(log, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    with open(os.path.join(args.out, "fidelity.md"), "w") as f:
                        f.write(table(records) + "\n")
    with open(os.path.join(args.out, "fidelity_short.md"), "w") as f:
        f.write(short_table(records) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
