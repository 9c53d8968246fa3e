"""Predict the labels of images or folders of images with a trained ML-AGCN checkpoint.

Prints, per image, the labels whose probability passes ``--threshold`` (or the ``--top-k``
most probable ones; the 5 best when none passes), and can write JSON and CSV. Folders are
searched recursively; an unreadable file (a broken link, a decompression bomb, ...) is
reported on stderr and in the outputs (field ``error``) without stopping the batch; inputs
with no image, or none readable, exit with status 2. File names that are not UTF-8 are
printed and written with their odd bytes as ``\\xNN``.

    python examples/predict.py CKPT_OR_FOLDER IMAGE_OR_FOLDER [...] [--threshold 0.5] [--top-k 5]
        [--batch-size 16] [--device cpu|cuda] [--json OUT] [--csv OUT] [--no-ema]
"""

from __future__ import annotations

if __name__ == "__main__":  # before the slow imports: PyG warning off, Ctrl-C one line
    try:
        import _startup  # noqa: F401  (examples/_startup.py, next to this script)
    except ImportError:  # run as a module (python -m examples.predict): all but that
        pass

import argparse
import sys
import warnings

from agcn_pyg.tools.cli import check_output_file, read_checkpoint, run
from agcn_pyg.tools.predict import (
    IMAGE_EXTENSIONS,
    check_options,
    find_images,
    predict,
    printable,
    write_csv,
    write_json,
)
from agcn_pyg.train.checkpoint import load_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint written by agcn_pyg (save_checkpoint), "
                        "or a folder written by save_pretrained")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--top-k", type=int, default=None,
                        help="report the k most probable labels instead of the threshold")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    parser.add_argument("--json", default=None, help="write the predictions as JSON there")
    parser.add_argument("--all-scores", action="store_true",
                        help="put every label's probability in the JSON output")
    parser.add_argument("--csv", default=None, help="write the predictions as CSV there")
    parser.add_argument("--no-ema", action="store_true", help="ignore the EMA weights")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def warn(message, category, filename, lineno, file=None, line=None):
        # One plain line on stderr per unreadable file, clear of the progress bar.
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)

    def check_args() -> list[str]:
        """Everything that can be checked before the checkpoint is read and the first image
        is scored, so that a typo does not cost a whole run; returns the image files."""
        check_options(args.threshold, args.top_k, batch_size=args.batch_size,
                      num_workers=args.workers, device=args.device)
        for flag, path in (("--json", args.json), ("--csv", args.csv)):
            if path is not None:
                check_output_file(path, flag)
        files = find_images(args.inputs)  # every input must exist
        if not files:
            raise ValueError(f"no image file in {' '.join(map(printable, args.inputs))} "
                             f"(folders are searched for {', '.join(IMAGE_EXTENSIONS)})")
        return files

    def predict_all() -> int:
        files = check_args()
        state = read_checkpoint(args.checkpoint)
        warnings.showwarning = warn
        model, names, _ = load_model(state, use_ema=not args.no_ema)
        records = predict(
            model, files, threshold=args.threshold, top_k=args.top_k,
            batch_size=args.batch_size, device=args.device, use_ema=not args.no_ema,
            num_workers=args.workers, progress=not args.quiet,
        )

        for r in records:
            if r["error"] is not None:
                print(f"{printable(r['path'])}\tERROR {printable(r['error'])}")
            else:
                shown = ", ".join(f"{n} {s:.3f}"
                                  for n, s in zip(r["labels"], r["scores"], strict=True))
                print(f"{printable(r['path'])}\t{shown}")
        if args.json:
            write_json(records, args.json, label_names=names if args.all_scores else None,
                       probabilities=args.all_scores)
        if args.csv:
            write_csv(records, args.csv)
        failed = sum(r["error"] is not None for r in records)
        if failed == len(records):  # outputs written: they say why, file by file
            raise ValueError(f"none of the {failed} file(s) could be read as an image")
        print(f"{len(records) - failed} images predicted, {failed} unreadable", file=sys.stderr)
        return 0

    return run(predict_all, parser.prog)

if __name__ == "__main__":
    raise SystemExit(main())
