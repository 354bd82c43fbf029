"""``llmc``: run or check a quantization config.

    llmc run CONFIG.yml [--run-dir DIR] [--device cpu|cuda] [--overwrite]
    llmc check CONFIG.yml [--print-config]
    llmc calib-preview CONFIG.yml [--n 3] [--json]
    python -m llmc --config_path CONFIG.yml      (the original toolkit's spelling)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _load(path):
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"llmc: error: {e}", file=sys.stderr)
        return None


def cmd_check(args) -> int:
    from .check import check_config

    cfg = _load(args.config)
    if cfg is None:
        return 1
    if getattr(args, "print_config", False):
        print(cfg.effective_yaml(), end="")
    try:
        problems = check_config(cfg)
    except Exception as e:  # noqa: BLE001 - a check must never end in a traceback
        problems = [f"the check itself failed ({type(e).__name__}: {' '.join(str(e).split())}); "
                    "please report this with the config"]
    for n in cfg.notices():
        print(f"llmc: note: {n}", file=sys.stderr)
    for p in problems:
        print(f"llmc: error: {p}", file=sys.stderr)
    if not problems:
        print("llmc: config OK", file=sys.stderr)
    return 1 if problems else 0


def default_run_dir(cfg) -> Path:
    if cfg.save is not None and cfg.save.save_path:
        return Path(cfg.save.save_path)
    return Path("runs") / f"{Path(str(cfg.model.path)).name}-{cfg.quant.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def _error(message) -> int:
    print(f"llmc: error: {message}", file=sys.stderr)
    return 1


def cmd_run(args) -> int:
    """A run goes into a fresh directory, locked for the whole run (:mod:`llmc.rundir`); one that
    already holds a run is refused unless ``--overwrite`` (the old contents are removed first).
    Every path problem is one ``llmc: error:`` line, reported before the model loads."""
    from .check import check_config
    from .progress import Progress
    from .rundir import RunDirError, open_run_dir, os_error_line, planned_outputs, short

    cfg = _load(args.config)
    if cfg is None:
        return 1
    if getattr(args, "save_path", None) and cfg.save is not None:
        cfg.save.save_path = str(args.save_path)  # before the check: the path the outputs will go to
    problems = check_config(cfg)
    if problems:
        for p in problems:
            print(f"llmc: error: {p}", file=sys.stderr)
        return 1
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    try:  # paths checked, the directory created and locked, before anything is loaded
        workspace = open_run_dir(run_dir, outputs=planned_outputs(cfg, run_dir),
                                 overwrite=bool(getattr(args, "overwrite", False)))
    except RunDirError as e:
        return _error(e)
    except OSError as e:
        return _error(f"run directory: {os_error_line(e)}")
    from .runner import run

    progress = Progress(run_dir)
    try:
        results = run(cfg, run_dir, device=args.device, progress=progress, workspace=workspace)
    except KeyboardInterrupt:
        progress.event("cancelled")
        progress.log("cancelled")
        return 130
    except Exception as e:  # report in one line; the traceback goes to run.log only
        import traceback

        line = os_error_line(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        progress.event("error", message=line)
        progress.log(traceback.format_exc(), echo=False)
        return _error(f"{line} (details in {short(run_dir / 'run.log')})")
    finally:
        progress.close()
        workspace.close()
    print(results["table"])
    print(f"run directory: {run_dir}")
    return 0


def cmd_calib_preview(args) -> int:
    """What the model will see of the config's calibration set (:mod:`llmc.data.preview`)."""
    import json

    from .data.preview import preview_calib
    from .models import get_model_class

    cfg = _load(args.config)
    if cfg is None:
        return 1
    if args.n < 1:
        return _error(f"--n must be at least 1, got {args.n}")
    try:
        cls = get_model_class(cfg.model.type, [cfg.model.adapters] if cfg.model.adapters else [])
        adapter = cls(cfg.model.path, cfg.model.torch_dtype, args.device or "cpu")
        view = preview_calib(cfg, adapter, args.n)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as e:  # what a config or folder gets wrong
        return _error(" ".join(str(e).split()) or type(e).__name__)
    except Exception as e:  # noqa: BLE001 - anything else (out of memory, ...) still ends in one line
        return _error(f"{type(e).__name__}: {' '.join(str(e).split())}")
    print(json.dumps(view.as_dict(), indent=1) if args.json else "\n".join(view.lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmc", description="Quantize and evaluate (vision-)language models.")
    ap.add_argument("--config_path", help="run this config (same as `llmc run CONFIG`)")
    ap.add_argument("--run-dir", dest="run_dir_top")
    ap.add_argument("--device", dest="device_top")
    ap.add_argument("--overwrite", dest="overwrite_top", action="store_true",
                    help="with --config_path: replace what the run directory already holds")
    sub = ap.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a config end to end")
    r.add_argument("config")
    r.add_argument("--run-dir")
    r.add_argument("--device", default=None)
    r.add_argument("--save-path", default=None, help="override save.save_path (e.g. to keep outputs in the run dir)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace what the run directory (and the save path's output folders) already hold")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check", help="validate a config without loading weights")
    c.add_argument("config")
    c.add_argument("--print-config", action="store_true", help="also print the effective config (defaults filled)")
    c.set_defaults(func=cmd_check)
    p = sub.add_parser("calib-preview", help="show what the model sees of the config's calibration set: "
                       "rendered prompts, image tokens, lengths against the context")
    p.add_argument("config")
    p.add_argument("--n", type=int, default=3, help="samples shown in full (default 3); every sample's length counts")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--device", default=None, help="where the model runs (default cpu)")
    p.set_defaults(func=cmd_calib_preview)
    return ap


def main(argv=None) -> int:
    from .textsafe import guard_std_streams

    guard_std_streams()  # what a repository wrote (names, paths, logs) is shown, never run by the terminal
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        if not args.config_path:
            ap.print_help(sys.stderr)
            return 2
        args = argparse.Namespace(config=args.config_path, run_dir=args.run_dir_top, device=args.device_top,
                                  save_path=None, overwrite=args.overwrite_top, func=cmd_run)
    try:
        return args.func(args)
    except OSError as e:  # PermissionError, FileExistsError, a name too long, ...: one line, no traceback
        from .paths import os_error_line

        return _error(os_error_line(e))
