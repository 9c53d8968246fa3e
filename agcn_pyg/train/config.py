"""Run configuration: YAML config files, which flags a user actually gave, and what a
resumed run takes from its checkpoint.

timm's convention: the values of ``--config run.yaml`` are defaults that the command-line
flags override. Here the file is turned into flags placed before the command line's
(:func:`config_file_argv`), so the file's values are parsed and checked exactly like typed
flags, and later flags win. A run folder's ``config.yaml`` is such a file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["bounded", "config_file_argv", "explicit_dests", "merge_resumed", "parse_args"]

_UNSET = object()


def bounded(kind: type = int, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` that parses ``kind`` and checks the range (open ends excluded):
    a bad value is refused up front, e.g. ``argument --epochs: must be >= 1 (got 0)``."""

    bounds = " and ".join(
        [f"{'>' if low_open else '>='} {low}"] * (low is not None)
        + [f"{'<' if high_open else '<='} {high}"] * (high is not None))

    def parse(text: str):
        value = kind(text)
        if (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {bounds} (got {text})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def config_file_argv(path: str | os.PathLike, defaults: Mapping[str, Any]) -> list[str]:
    """The flags equivalent to a YAML file of ``dest: value`` pairs (``lr: 1e-4``,
    ``model: tresnet_m``, ``channels_last: true``, a list for a multi-value flag; ``null``
    keeps the default). ``defaults`` (the parser's namespace without arguments) names the
    known keys.

    Raises:
        FileNotFoundError, ValueError: the file is missing, not a mapping, or has a key
            that is not a flag.
    """
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"--config: '{path}' is not valid YAML ({str(e).splitlines()[0]})"
                             ) from None
    if not isinstance(values, dict):
        raise ValueError(f"--config: '{path}' must hold a mapping of flag: value "
                         f"(got {type(values).__name__})")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in values if k not in defaults or k == "config")
    if unknown:
        raise ValueError(f"--config: '{path}' has unknown key(s) {unknown}")
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) and isinstance(defaults[key], str):
            value = "on" if value else "off"  # YAML 1.1 reads `amp: off` as false
        if isinstance(value, bool):
            if value:
                argv.append(_flag(key))
            elif defaults[key] is not False:  # a --no-... (BooleanOptionalAction) flag
                argv.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [_flag(key), *map(str, value)]
        else:
            argv += [_flag(key), str(value)]
    return argv


def explicit_dests(build_parser: Callable[[], argparse.ArgumentParser],
                   argv: list[str]) -> set[str]:
    """The destinations that ``argv`` sets (as opposed to defaults): ``argv`` is parsed by
    a fresh parser whose every default is a sentinel. Call it after the real parser has
    accepted ``argv`` (so ``--help`` and errors are handled there)."""
    dests = vars(build_parser().parse_args([]))
    probe = build_parser()
    probe.set_defaults(**{d: _UNSET for d in dests})
    namespace, _ = probe.parse_known_args(argv)
    return {d for d, v in vars(namespace).items() if v is not _UNSET}


def parse_args(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]
               ) -> tuple[argparse.Namespace, set[str]]:
    """Parses ``argv`` with ``build_parser()``'s parser after the flags of its ``--config``
    file, if any (:func:`config_file_argv`); returns the namespace and the destinations
    that the file or the command line set (:func:`explicit_dests`). Errors exit through
    ``parser.error`` like any bad flag."""
    parser = build_parser()
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config")
    path = probe.parse_known_args(argv)[0].config
    if path:
        try:
            argv = [*config_file_argv(path, vars(parser.parse_args([]))), *argv]
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
    return parser.parse_args(argv), explicit_dests(build_parser, argv)


def merge_resumed(args: argparse.Namespace, saved: Mapping[str, Any], explicit: Collection[str],
                  data_keys: Collection[str], runtime_keys: Collection[str]) -> list[str]:
    """Makes a resumed run continue the saved one: every flag not given is taken from
    ``saved`` (the checkpoint's ``run_config``); of the flags given, data flags (all or
    none) and runtime ones win, and recipe ones are ignored, since they shape the
    trajectory. Returns the ignored flags."""
    new_data = any(k in explicit for k in data_keys)
    ignored = []
    for k, v in saved.items():
        if k in ("resume", "evaluate", "output", "config", "overwrite") or not hasattr(args, k):
            continue
        if k in data_keys:
            if not new_data:
                setattr(args, k, v)
            continue
        if k in explicit:
            if k not in runtime_keys and getattr(args, k) != v:
                ignored.append(_flag(k))
            else:
                continue
        setattr(args, k, v)
    return ignored
