"""The wizard's state: one :class:`Session` shared by the TUI and the headless twin.

A session is the answers (one file per model), where they are saved, the work folder (clones,
configs, runs), the models folder (generated declarations), the environment the model's code is
installed into, and the device. Every step of :mod:`wizard.steps` takes a session; the answers
are saved after every step.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .services.answers import Answers, load_answers, save_answers


@dataclass
class Session:
    answers: Answers
    answers_path: Path | None
    workdir: Path
    models_dir: Path | None = None  #: None: ``<workdir>/adapters``
    install_target: Path | None = None  #: pip ``--target`` for the model's code (None: this environment)
    device: str | None = None
    assume_yes: bool = False  #: headless ``--yes``: consent to install the fetched code

    @classmethod
    def load(cls, answers_path: Path, workdir: Path | None = None, **kw) -> Session:
        """The session of an answers file (a missing file starts empty answers)."""
        answers_path = Path(answers_path)
        answers = load_answers(answers_path) if answers_path.exists() else Answers()
        workdir = Path(workdir) if workdir else answers_path.resolve().parent
        return cls(answers, answers_path, workdir, **{k: Path(v) if k.endswith(("_dir", "_target")) and v else v
                                                     for k, v in kw.items()})

    def save(self) -> Path:
        path = self.answers_path or (self.workdir / "answers.yml")
        save_answers(self.answers, path)
        self.answers_path = path
        return path

    def models_dir_resolved(self) -> Path:
        """Where model declarations go: ``--models-dir``, else ``<workdir>/adapters``."""
        from .services.register import default_models_dir

        return self.models_dir or default_models_dir(self.workdir)

    def configs_dir(self) -> Path:
        return self.workdir / "configs"

    def runs_dir(self) -> Path:
        return self.workdir / "runs"

    def engine_env(self) -> dict[str, str]:
        """Environment additions for the engine's processes: the models folder and installed code."""
        env = {"LLMC_ADAPTERS": os.pathsep.join(filter(None, [str(self.models_dir_resolved()),
                                                              os.environ.get("LLMC_ADAPTERS")]))}
        if self.install_target:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.install_target), os.environ.get("PYTHONPATH")]))
        return env

    def env_dir(self) -> Path:
        """Where the model's own environment goes: ``<workdir>/envs/<code folder name>``."""
        code = self.answers.source.code_dir
        return self.workdir / "envs" / (Path(code).name if code else "model")

    def model_python(self) -> Path | None:
        """The Python of the model's own environment, once the wizard built it (None: this
        environment's). An ``install.env_dir`` the wizard did not build (no stamp of its build in
        it: an answers file from elsewhere, a hand-made folder) is never run."""
        from .services.isolate import STAMP, env_python

        d = self.answers.install.env_dir
        py = env_python(Path(d)) if d else None
        return py if py is not None and py.exists() and (Path(d) / STAMP).is_file() else None

    def in_model_env(self) -> bool:
        """Whether this process runs where the model's code is installed."""
        py = self.model_python()
        return py is None or Path(sys.prefix).resolve() == py.parent.parent.resolve()

    def activate_install_target(self) -> None:
        """Make the installed code importable in this process too."""
        from .services.install import activate_installed

        activate_installed(self.install_target)
