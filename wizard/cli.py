"""``llmc-wizard``: the TUI and its headless subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_demo(args) -> int:
    from .demo import zoo as zoo_mod

    zoo = zoo_mod.build(args.cache, force=args.force, log=lambda m: print(f"[demo] {m}", file=sys.stderr))
    if args.action == "build":
        print(zoo.to_json(), end="")
        return 0
    if args.action == "info":
        from dataclasses import asdict

        from .demo.facts import all_facts

        print(json.dumps([asdict(f) for f in all_facts()], indent=2))
        return 0
    from .app import WizardApp

    # The demo keeps its clones, adapters, configs and runs beside the zoo, never in the checkout.
    work = zoo.root.parent / "work"
    WizardApp(zoo_root=zoo.root, answers_path=work / "answers.yml", workdir=work,
              models_dir=work / "adapters").run()
    return 0


def _cmd_tui(args) -> int:
    from .app import WizardApp

    WizardApp(answers_path=getattr(args, "answers", None)).run()
    return 0


def _cmd_steps(args) -> int:
    from .onboard import STEPS, make_context, onboard

    ctx = make_context(args.answers, args.workdir, args.models_dir, args.yes, args.device, args.install_target)
    steps = STEPS if args.command == "onboard" else (args.command,)
    onboard(ctx, steps)
    return 0


def _cmd_inspect(args) -> int:
    from .services.inspect import main_inspect

    return main_inspect(args.rest)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmc-wizard", description="Onboard, quantize and evaluate a (vision-)language model.")
    sub = ap.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="the demo zoo: build it (if needed) and open the wizard on it")
    d.add_argument("action", nargs="?", choices=["launch", "build", "info"], default="launch",
                   help="launch (default): open the wizard; build: only build the zoo; info: print model facts")
    d.add_argument("--cache", type=Path, default=None, help="cache folder (default $LLMC_WIZARD_CACHE or ~/.cache/llmc-wizard)")
    d.add_argument("--force", action="store_true", help="rebuild the zoo even if it is up to date")
    d.set_defaults(func=_cmd_demo)
    ap.add_argument("--answers", type=Path, default=None, help="answers file to load/save in the TUI")
    for name, help_ in [("onboard", "run every step headless from an answers file"),
                        ("fetch", "clone/fetch the weights and code repositories"),
                        ("install", "pip-install the model's code (custom-code models)"),
                        ("generate", "render the adapter and config"),
                        ("register", "register the generated adapter"),
                        ("smoke", "smoke-test the generated adapter"),
                        ("run", "quantize and evaluate with the engine")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--answers", type=Path, required=True, help="the answers file (YAML)")
        p.add_argument("--workdir", type=Path, default=None, help="where clones, configs and runs go "
                       "(default: the answers file's folder)")
        p.add_argument("--models-dir", type=Path, default=None,
                       help="write adapters here instead of llmc/models (runs get it via $LLMC_ADAPTERS)")
        p.add_argument("--yes", action="store_true", help="confirm installing the cloned code")
        p.add_argument("--device", default=None)
        p.add_argument("--install-target", type=Path, default=None,
                       help="pip-install the model's code into this folder instead of the environment")
        p.set_defaults(func=_cmd_steps)
    i = sub.add_parser("inspect", help="print a model's inspect report (--json)", add_help=False)
    i.add_argument("rest", nargs=argparse.REMAINDER)
    i.set_defaults(func=_cmd_inspect)
    ap.set_defaults(func=_cmd_tui)
    return ap


def main(argv: list[str] | None = None) -> int:
    from .services.errors import WizardError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("llmc-wizard: cancelled", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, WizardError) as e:
        print(f"llmc-wizard: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
