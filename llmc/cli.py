"""``llmc``: run or check a quantization config.

    llmc run CONFIG.yml [--run-dir DIR] [--device cpu|cuda]
    llmc check CONFIG.yml
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
    print(cfg.effective_yaml(), end="")
    problems = check_config(cfg)
    for p in problems:
        print(f"llmc: error: {p}", file=sys.stderr)
    if not problems:
        print("llmc: config OK", file=sys.stderr)
    return 1 if problems else 0


def default_run_dir(cfg) -> Path:
    if cfg.save is not None and cfg.save.save_path:
        return Path(cfg.save.save_path)
    return Path("runs") / f"{Path(str(cfg.model.path)).name}-{cfg.quant.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_run(args) -> int:
    from .check import check_config
    from .progress import Progress
    from .runner import run

    cfg = _load(args.config)
    if cfg is None:
        return 1
    problems = check_config(cfg)
    if problems:
        for p in problems:
            print(f"llmc: error: {p}", file=sys.stderr)
        return 1
    if getattr(args, "save_path", None) and cfg.save is not None:
        cfg.save.save_path = str(args.save_path)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    progress = Progress(run_dir)
    try:
        results = run(cfg, run_dir, device=args.device, progress=progress)
    except KeyboardInterrupt:
        progress.event("cancelled")
        progress.log("cancelled")
        return 130
    except Exception as e:  # report, keep the traceback in the log
        import traceback

        progress.event("error", message=f"{type(e).__name__}: {e}")
        progress.log(traceback.format_exc())
        print(f"llmc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(results["table"])
    print(f"run directory: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmc", description="Quantize and evaluate (vision-)language models.")
    ap.add_argument("--config_path", help="run this config (same as `llmc run CONFIG`)")
    ap.add_argument("--run-dir", dest="run_dir_top")
    ap.add_argument("--device", dest="device_top")
    sub = ap.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a config end to end")
    r.add_argument("config")
    r.add_argument("--run-dir")
    r.add_argument("--device", default=None)
    r.add_argument("--save-path", default=None, help="override save.save_path (e.g. to keep outputs in the run dir)")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check", help="validate a config without loading weights")
    c.add_argument("config")
    c.set_defaults(func=cmd_check)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        if not args.config_path:
            ap.print_help(sys.stderr)
            return 2
        args = argparse.Namespace(config=args.config_path, run_dir=args.run_dir_top, device=args.device_top,
                                  save_path=None)
        return cmd_run(args)
    return args.func(args)
