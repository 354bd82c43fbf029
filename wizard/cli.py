"""``llmc-wizard``: the TUI and its headless subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import steptable
from .services.errors import WizardError, one_line_error


def _cmd_demo(args) -> int:
    from .demo import zoo as zoo_mod

    if args.family is not None and args.action != "family":
        raise WizardError(f"unexpected argument {args.family!r}", "only `demo family NAME` takes a name")
    if args.action == "family":
        from .demo.families import FAMILIES, publish_family

        if args.family not in FAMILIES:
            what = f"unknown family {args.family!r}" if args.family else "`demo family` needs a family name"
            raise WizardError(what, f"choose one of {', '.join(FAMILIES)}")
        print(publish_family(args.family, args.cache))
        return 0
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
    return _run_app(WizardApp(zoo_root=zoo.root, answers_path=work / "answers.yml", workdir=work,
                              models_dir=work / "adapters"))


def _restart(python: Path, argv: list[str]) -> None:
    """Replace this process by the wizard running on ``python`` (the model's own environment)."""
    import os

    print(f"llmc-wizard: continuing in the model's environment ({python})", file=sys.stderr, flush=True)
    os.execv(str(python), [str(python), "-m", "wizard", *[str(a) for a in argv]])


def _run_app(app) -> int:
    from .app import Restart

    result = app.run()
    if isinstance(result, Restart):
        _restart(result.python, result.argv)
    return 0


def _cmd_tui(args) -> int:
    from .app import WizardApp
    from .demo.zoo import built

    zoo = built()  # a zoo built before (its default place or $LLMC_WIZARD_CACHE) is offered on welcome
    return _run_app(WizardApp(zoo_root=zoo.root if zoo else None, answers_path=args.answers, workdir=args.workdir,
                              models_dir=args.models_dir, device=args.device, start=args.step))


#: subcommands that run where the model's code is installed (fetch, install and onboard run here;
#: onboard hands its later steps over by itself)
IN_MODEL_ENV = {None, "calib", *steptable.IN_MODEL_ENV}


def _in_model_env(args, argv: list[str]) -> None:
    """Once the model has its own environment, restart commands that touch its code in there."""
    answers = getattr(args, "answers", None)
    if args.command not in IN_MODEL_ENV or answers is None or not Path(answers).is_file():
        return
    from .session import Session

    s = Session.load(answers, getattr(args, "workdir", None))
    if not s.in_model_env():
        _restart(s.model_python(), argv)


def _session(args):
    """The session of a headless subcommand: its answers file (which must exist) and options."""
    from .session import Session

    if not Path(args.answers).exists():
        raise WizardError(f"answers file {args.answers} does not exist",
                          "check the path, or start the wizard without --answers to create one")
    return Session.load(args.answers, args.workdir, models_dir=args.models_dir, assume_yes=args.yes,
                        device=args.device, install_target=args.install_target)


def _cmd_steps(args) -> int:
    from .steps import STEPS, Reporter, onboard

    s = _session(args)
    steps = STEPS if args.command == "onboard" else (args.command,)
    onboard(s, steps, Reporter(log=lambda m: print(m, file=sys.stderr)))
    return 0


def _cmd_evaluate(args) -> int:
    from .steps import Reporter, evaluate

    s = _session(args)
    res = evaluate(s, Reporter(log=lambda m: print(m, file=sys.stderr)), args.gpus)
    print(json.dumps({k: res[k] for k in ("world_size", "total", "seconds") if k in res}))
    return 0


def _cmd_try(args) -> int:
    from .steps import Reporter, ask

    s = _session(args)
    out = ask(s, Reporter(log=lambda m: print(m, file=sys.stderr)), args.question, args.image, args.sample)
    print(f"float: {out.float_answer}\nquantized: {out.quantized_answer}")
    return 0


def _cmd_calib(args) -> int:
    from .reporter import Reporter
    from .runs import calib_preview

    calib_preview(_session(args), Reporter(log=print), args.n)
    return 0


def _cmd_inspect(args) -> int:
    if args.answers is not None:
        if args.model_dir is not None:
            raise WizardError("give either MODEL_DIR or --answers, not both", "drop one of them")
        return _cmd_steps(args)
    if args.model_dir is None:
        raise WizardError("inspect needs a model folder or an answers file",
                          "run `llmc-wizard inspect MODEL_DIR` or `llmc-wizard inspect --answers FILE`")
    from .services.inspect import print_report

    return print_report(args.model_dir, args.code, args.group_size, args.json)


def _step_options(p: argparse.ArgumentParser, answers_required: bool = True) -> None:
    p.add_argument("--answers", type=Path, required=answers_required, default=None, help="the answers file (YAML)")
    p.add_argument("--workdir", type=Path, default=None, help="where clones, configs and runs go "
                   "(default: the answers file's folder)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where model declarations go (default: <workdir>/adapters; configs name it in model.adapters)")
    p.add_argument("--yes", action="store_true", help="agree to install the cloned code (at the fetched commit)")
    p.add_argument("--device", default=None)
    p.add_argument("--install-target", type=Path, default=None,
                   help="pip-install the model's code into this folder instead of the environment")


def _evaluate_options(e: argparse.ArgumentParser) -> None:
    e.add_argument("--gpus", type=int, default=1, help="processes, one per GPU (default 1)")
    e.set_defaults(func=_cmd_evaluate)


def _try_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--question", default=None, help="the question (default: the evaluation sample's own)")
    t.add_argument("--image", default=None, help="an image file (default: the evaluation sample's image)")
    t.add_argument("--sample", type=int, default=0, help="the evaluation sample to ask about")
    t.set_defaults(func=_cmd_try)


def _inspect_options(i: argparse.ArgumentParser) -> None:
    i.add_argument("model_dir", nargs="?", type=Path, default=None, help="model folder (with config.json)")
    i.add_argument("--code", metavar="PKG", default=None,
                   help="the model's own code package (VILA-style custom code), e.g. tiny_vila")
    i.add_argument("--group-size", metavar="N", type=int, default=None,
                   help="list the decoder Linears whose in_features is not divisible by N")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_cmd_inspect)


#: subcommands with options beyond the answers file's
_OWN_OPTIONS = {"evaluate": _evaluate_options, "try": _try_options, "inspect": _inspect_options}
_DESCRIPTIONS = {"inspect": "Report a model's structure from its config.json (no weights read): "
                 "`inspect MODEL_DIR [--code PKG] [--json]`, or run the inspect step of `--answers FILE`."}


def build_parser() -> argparse.ArgumentParser:
    from .demo.families import FAMILIES

    ap = argparse.ArgumentParser(prog="llmc-wizard", description="Onboard, quantize and evaluate a (vision-)language model.")
    sub = ap.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="the demo zoo: build it (if needed) and open the wizard on it")
    d.add_argument("action", nargs="?", choices=["launch", "build", "info", "family"], default="launch",
                   help="launch (default): open the wizard; build: only build the zoo; info: print model facts; "
                   "family NAME: a tiny checkpoint of a transformers VLM family as a local git repository")
    d.add_argument("family", nargs="?", default=None, help="with `family`: " + ", ".join(FAMILIES))
    d.add_argument("--cache", type=Path, default=None, help="cache folder (default $LLMC_WIZARD_CACHE or ~/.cache/llmc-wizard)")
    d.add_argument("--force", action="store_true", help="rebuild the zoo even if it is up to date")
    d.set_defaults(func=_cmd_demo)
    ap.add_argument("--answers", type=Path, default=None, help="answers file to load/save in the TUI")
    ap.add_argument("--workdir", type=Path, default=None, help="the TUI's work folder (default: the answers file's)")
    ap.add_argument("--models-dir", type=Path, default=None, help="where the TUI writes model declarations")
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)  # the step the TUI opens on
    p = sub.add_parser("onboard", help="run every step headless from an answers file")
    _step_options(p)
    p.set_defaults(func=_cmd_steps)
    for step in steptable.TABLE:  # in the table's order; some steps have options of their own
        p = sub.add_parser(step.name, help=step.help, description=_DESCRIPTIONS.get(step.name))
        _step_options(p, answers_required=step.name != "inspect")
        _OWN_OPTIONS.get(step.name, lambda p: p.set_defaults(func=_cmd_steps))(p)
    c = sub.add_parser("calib", help="preview what the model sees of the calibration set: rendered prompts, "
                       "image tokens, lengths against its context (the run's own batches)")
    c.add_argument("action", choices=["preview"])
    c.add_argument("--n", type=int, default=3, help="samples shown in full (default 3)")
    _step_options(c)
    c.set_defaults(func=_cmd_calib)
    ap.set_defaults(func=_cmd_tui)
    return ap


def main_inspect(argv: list[str] | None = None) -> int:
    """``llmc-wizard inspect ...`` with these arguments; returns the exit code."""
    return main(["inspect", *(argv if argv is not None else sys.argv[1:])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    import signal

    from llmc.textsafe import guard_std_streams

    def interrupted(signum, _frame):  # SIGTERM (timeout, CI, docker stop), SIGHUP: as ctrl+c, children go too
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    guard_std_streams()  # what a repository wrote is shown, never run by the terminal (the TUI draws on its own stream)
    try:
        _in_model_env(args, argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("llmc-wizard: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing to report
        return 0
    except (OSError, ValueError, RuntimeError, ImportError, WizardError) as e:
        print(f"llmc-wizard: error: {one_line_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
