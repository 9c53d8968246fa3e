"""Export a trained ML-AGCN checkpoint for serving with torch.export (a ``.pt2`` file).

The graph head is folded into one linear layer of precomputed classifiers; the batch
dimension is dynamic; label names and the preprocessing config travel in the archive.

    python examples/export.py CKPT_OR_FOLDER OUT.pt2 [--input-size 3 448 448] [--no-ema]

Serve it with::

    from agcn_pyg.tools.export import load_exported      # or torch.export.load(path).module()
    model, meta = load_exported("model.pt2")       # meta: label_names, data_config
    probabilities = model(images).sigmoid()
"""

from __future__ import annotations

if __name__ == "__main__":  # before the slow imports: PyG warning off, Ctrl-C one line
    try:
        import _startup  # noqa: F401  (examples/_startup.py, next to this script)
    except ImportError:  # run as a module (python -m examples.predict): all but that
        pass

import argparse

from agcn_pyg.tools.cli import check_output_file, read_checkpoint, run
from agcn_pyg.tools.export import export_model, load_exported


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint written by agcn_pyg (save_checkpoint), "
                        "or a folder written by save_pretrained")
    parser.add_argument("output", help="where to write the exported program (.pt2)")
    parser.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                        help="image size (default: the checkpoint's data_config input_size)")
    parser.add_argument("--no-ema", action="store_true", help="ignore the EMA weights")
    args = parser.parse_args(argv)

    def export() -> int:
        check_output_file(args.output, "output")  # before the minutes torch.export takes
        state = read_checkpoint(args.checkpoint)
        export_model(state, args.input_size, args.output, use_ema=not args.no_ema)
        _, meta = load_exported(args.output)
        print(f"wrote {args.output}: {len(meta['label_names'])} labels, input "
              f"{tuple(meta['input_size'])}, dynamic batch, outputs logits")
        return 0

    return run(export, parser.prog)


if __name__ == "__main__":
    raise SystemExit(main())
