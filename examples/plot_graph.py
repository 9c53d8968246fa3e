"""Draw the label graphs a trained ML-AGCN learned and list each label's strongest edges.

Writes, from the checkpoint alone:

* ``graphs.png``: one figure, one row per graph layer, four heatmaps per row (A, B, C and
  A+B+C); row i of a heatmap is what label i aggregates (``M[i, j]`` = weight of j -> i);
* ``strongest_edges.md`` / ``.csv``: the ``--top-k`` strongest incoming edges of every label
  (self-edges excluded), with a † on edges whose co-occurrence A is below ML-GCN's
  threshold 0.4; the markdown table is also printed.

    python examples/plot_graph.py CKPT_OR_FOLDER [--out DIR] [--labels fork knife ...] [--top-k 5]
"""

from __future__ import annotations

if __name__ == "__main__":  # before the slow imports: PyG warning off, Ctrl-C one line
    try:
        import _startup  # noqa: F401  (examples/_startup.py, next to this script)
    except ImportError:  # run as a module (python -m examples.predict): all but that
        pass

import argparse
import os

from agcn_pyg.io import atomic_write
from agcn_pyg.tools.cli import check_output_folder, read_checkpoint, run
from agcn_pyg.tools.visualize import (
    MLGCN_TAU,
    edges_to_csv,
    edges_to_markdown,
    plot_learned_graphs,
    strongest_edges,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint written by agcn_pyg (save_checkpoint), "
                        "or a folder written by save_pretrained")
    parser.add_argument("--out", default="graphs", help="output folder (default: graphs)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="only these label names (heatmap rows and columns, table rows)")
    parser.add_argument("--top-k", type=int, default=5, help="edges listed per label")
    parser.add_argument("--tau", type=float, default=MLGCN_TAU,
                        help="mark edges whose A is below this (default: ML-GCN's 0.4)")
    parser.add_argument("--max-ticks", type=int, default=40,
                        help="at most this many tick labels per heatmap axis")
    parser.add_argument("--hide-diagonal", action="store_true",
                        help="mask self-edges in the heatmaps")
    parser.add_argument("--no-ema", action="store_true", help="ignore the EMA weights")
    args = parser.parse_args(argv)

    def plot() -> int:
        if args.top_k < 1:
            raise ValueError(f"'--top-k' must be at least 1 (got {args.top_k})")
        if not 0.0 <= args.tau <= 1.0:  # NaN included
            raise ValueError(f"'--tau' must be a probability in [0, 1] (got {args.tau})")
        check_output_folder(args.out, "--out")
        state = read_checkpoint(args.checkpoint)
        use_ema = not args.no_ema
        os.makedirs(args.out, exist_ok=True)

        png = os.path.join(args.out, "graphs.png")
        plot_learned_graphs(state, labels=args.labels, path=png, max_ticks=args.max_ticks,
                            diagonal=not args.hide_diagonal, use_ema=use_ema)
        edges = strongest_edges(state, top_k=args.top_k, labels=args.labels, tau=args.tau,
                                use_ema=use_ema)
        table = edges_to_markdown(edges, tau=args.tau)
        with atomic_write(os.path.join(args.out, "strongest_edges.md")) as f:
            f.write(table.encode("utf-8"))
        edges_to_csv(edges, os.path.join(args.out, "strongest_edges.csv"))

        print(table)
        print(f"wrote {png}, strongest_edges.md and strongest_edges.csv to {args.out}")
        return 0

    return run(plot, parser.prog)

if __name__ == "__main__":
    raise SystemExit(main())
