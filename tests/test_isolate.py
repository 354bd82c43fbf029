"""The model's own environment (wizard.services.isolate): the code's pins over this environment.

Real resolutions with uv against the package index, real virtual environments, real imports.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from wizard.services.errors import WizardError
from wizard.services.isolate import create_env, env_python, plan_env

pytestmark = pytest.mark.slow


def _project(path, deps, body="import transformers\nVERSION = transformers.__version__\n"):
    (path / "oldcode").mkdir(parents=True)
    (path / "oldcode" / "__init__.py").write_text(body)
    (path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "oldcode"\nversion = "1"\ndependencies = {deps!r}\n'.replace("'", '"'))
    return path


def _in_env(env, code: str) -> str:
    return subprocess.run([str(env_python(env)), "-W", "ignore", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_environment_holds_only_what_the_code_pins_differently(tmp_path):
    code = _project(tmp_path / "code", ["transformers==4.36.2", "torch==2.0.1", "pillow"])
    plan = plan_env(code, tmp_path / "envs" / "old")
    names = {p.split("==")[0] for p in plan.install}
    assert "transformers==4.36.2" in plan.install and "tokenizers" in names
    assert "torch" not in names and "pillow" not in names  # relaxed / already here at a fitting version
    assert plan.relaxed["torch"].startswith(f"this environment's {metadata.version('torch')} is used")
    create_env(plan, code_package="oldcode")
    out = _in_env(plan.env_dir, "import oldcode, torch, llmc.runner, lmms_eval.evaluator; "
                                "print(oldcode.VERSION, torch.__version__)")
    import torch

    assert out == f"4.36.2 {torch.__version__}"  # this environment's torch, not the pinned 2.0.1
    # this environment is untouched
    assert metadata.version("transformers").split(".")[0] == "5"


def test_a_pin_the_engine_cannot_live_with_is_relaxed_and_said_why(tmp_path):
    code = _project(tmp_path / "code", ["numpy==1.26.4", "transformers==4.37.2"])
    plan = plan_env(code, tmp_path / "envs" / "old")
    assert "numpy" in plan.relaxed and "conflicts with the engine's requirements" in plan.relaxed["numpy"]
    assert not any(p.startswith("numpy==") for p in plan.install) and "transformers==4.37.2" in plan.install


def test_a_package_that_fails_to_import_in_the_environment_is_relaxed(tmp_path):
    # scikit-learn 1.2.2 is built for numpy 1; the engine keeps numpy 2: importing it fails
    code = _project(tmp_path / "code", ["scikit-learn==1.2.2", "transformers==4.37.2"],
                    "try:\n    import sklearn  # noqa\nexcept ImportError:\n    sklearn = None\n")
    plan = plan_env(code, tmp_path / "envs" / "old")
    assert "scikit-learn==1.2.2" in plan.install
    lines = []
    create_env(plan, code_package="oldcode", on_line=lines.append)
    assert "fails to import in the environment" in plan.relaxed["scikit-learn"]
    assert any("scikit-learn fails to import" in ln for ln in lines)
    assert _in_env(plan.env_dir, "import oldcode; print(oldcode.sklearn)") == "None"


def test_the_model_defining_libraries_are_never_relaxed(tmp_path):
    code = _project(tmp_path / "code", ["transformers==4.36.2", "tokenizers==0.19.1"])
    with pytest.raises(WizardError, match="cannot live with the engine's") as e:
        plan_env(code, tmp_path / "envs" / "old")
    assert "\n" not in str(e.value) and "tokenizers" in str(e.value)


def test_a_folder_that_is_not_an_environment_is_never_deleted(tmp_path):
    code = _project(tmp_path / "code", ["transformers==4.37.2"])
    plan = plan_env(code, tmp_path / "mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(WizardError, match="is not a virtual environment"):
        create_env(plan)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_the_command_line_builds_an_environment_from_requirements(tmp_path):
    env = tmp_path / "compat"
    cmd = [sys.executable, "-m", "wizard.services.isolate", str(env), "transformers==4.37.2"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert _in_env(env, "import transformers; print(transformers.__version__)") == "4.37.2"
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "is up to date" in again.stdout


async def test_the_wizard_app_goes_on_in_the_models_environment(tmp_path):
    """Moving to a step that imports the code, the app quits with a restart in the model's
    environment, on that step, with the same answers and folders; Source and Install stay here."""
    from wizard.app import Restart, WizardApp
    from wizard.services.isolate import uv

    env = tmp_path / "work" / "envs" / "code"
    subprocess.run([*uv(), "venv", "-q", str(env), "--python", sys.executable], check=True)
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path / "work", models_dir=tmp_path / "m")
    (env / ".llmc-wizard-env.json").write_text("{}")  # as the Install step leaves it
    app.answers.install.env_dir = str(env)
    async with app.run_test() as pilot:
        app.goto("Install")
        await pilot.pause()
        assert app.screen.TITLE_TEXT == "Install" and app.return_value is None
        app.goto("Inspect")
        await pilot.pause()
    assert isinstance(app.return_value, Restart) and app.return_value.python == env / "bin" / "python"
    argv = app.return_value.argv
    assert argv[argv.index("--step") + 1] == "Inspect" and argv[argv.index("--workdir") + 1] == str(tmp_path / "work")
    assert (tmp_path / "answers.yml").is_file()  # saved before leaving


def test_an_import_the_code_does_not_declare_is_named_and_extra_packages_supply_it(tmp_path):
    """Research code imports what it never declares (VILA imports deepspeed and a git-only
    package at import time): the error names the module and the answer; ``extra`` installs it."""
    code = _project(tmp_path / "code", ["transformers==4.37.2"], "import shortuuid\n")
    with pytest.raises(WizardError, match="the code imports shortuuid, which it does not declare") as e:
        create_env(plan_env(code, tmp_path / "envs" / "a"), code_package="oldcode")
    assert "install.extra_packages" in e.value.fix
    plan = plan_env(code, tmp_path / "envs" / "b", extra=["shortuuid"])
    assert any(p.startswith("shortuuid==") for p in plan.install)
    create_env(plan, code_package="oldcode")
    assert _in_env(plan.env_dir, "import oldcode, shortuuid; print('ok')") == "ok"


def test_a_pin_that_breaks_the_engines_imports_is_relaxed_even_when_the_importer_is_named(tmp_path):
    """pydantic 1 (VILA pins ``pydantic<2``) makes the wizard's own import fail in the importer's
    frame: the package at fault is the one the ImportError names."""
    code = _project(tmp_path / "code", ["pydantic==1.10.13", "transformers==4.37.2"])
    plan = plan_env(code, tmp_path / "envs" / "old")
    assert "pydantic==1.10.13" in plan.install
    create_env(plan, code_package="oldcode")
    assert "fails to import in the environment" in plan.relaxed["pydantic"]
    assert _in_env(plan.env_dir, "import pydantic; print(pydantic.VERSION)").startswith("2.")


def test_a_build_plugin_installed_here_neither_runs_in_nor_breaks_the_models_environment(tmp_path, hostile_plugin):
    """A package here registers a setuptools plugin that works only here (as ``kernels``, which
    transformers 5.25 requires, imports a huggingface_hub name the code's older pin lacks): the code
    still builds and installs, the plugin never runs there, and nothing the environment did not ask
    for — the plugin, nor the outer transformers' own requirements — is visible in it."""
    from wizard.services.isolate import installed_here

    code = _project(tmp_path / "code", ["transformers==4.37.2"])
    plan = plan_env(code, tmp_path / "envs" / "old")
    create_env(plan, code_package="oldcode")
    assert not hostile_plugin.exists(), f"the plugin ran in {hostile_plugin.read_text()}"
    probe = ("import importlib.util as u, importlib.metadata as m, oldcode; "
             "print(oldcode.VERSION, u.find_spec('hostile_plugin') is None, u.find_spec('kernels') is None, "
             "sorted(e.value for e in m.entry_points(group='egg_info.writers') if 'hostile' in e.value))")
    assert _in_env(plan.env_dir, probe) == "4.37.2 True True []"
    if "kernels" in installed_here():  # the real pair of the lock: transformers 5 here with its kernels
        assert metadata.version("transformers").split(".")[0] == "5"


def test_a_broken_adapter_plugin_is_one_line_naming_its_package(broken_adapter_plugin):
    from llmc.models.registry import get_model_class

    with pytest.raises(ValueError) as e:
        get_model_class("NoSuchModelType")
    msg = str(e.value)
    assert "\n" not in msg and f"of the package {broken_adapter_plugin}" in msg and "this plugin is broken" in msg


def test_imports_the_code_declares_only_for_training_get_stand_ins_and_others_are_named(tmp_path):
    """VILA 1.5 imports deepspeed (declared only in its ``train`` extra) at import time, and
    flash_attn (declared nowhere): the first gets a stand-in by itself, the second is named with
    the fix; with ``stand_ins`` both import, and calling into one fails naming it."""
    code = tmp_path / "code"
    (code / "oldcode").mkdir(parents=True)
    (code / "oldcode" / "__init__.py").write_text(
        "import llmc_train_only_xyz.comm as dist\nfrom llmc_undeclared_xyz.sub import fn\n"
        "import transformers\nVERSION = transformers.__version__\n")
    (code / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "oldcode"\nversion = "1"\ndependencies = ["transformers==4.37.2"]\n'
        '[project.optional-dependencies]\ntrain = ["llmc-train-only-xyz==0.9.5"]\n')
    lines: list[str] = []
    plan = plan_env(code, tmp_path / "envs" / "a")
    assert plan.optional_only == {"llmc-train-only-xyz": "train"}
    with pytest.raises(WizardError) as e:
        create_env(plan, code_package="oldcode", on_line=lines.append)
    assert "\n" not in str(e.value) and "the code imports llmc_undeclared_xyz" in str(e.value)
    assert "install.stand_ins: [llmc_undeclared_xyz]" in e.value.fix
    assert any("llmc_train_only_xyz (declared only in the code's 'train' extra): a stand-in" in ln for ln in lines)
    plan = plan_env(code, tmp_path / "envs" / "b", stand_ins=["llmc_undeclared_xyz"])
    create_env(plan, code_package="oldcode")
    assert set(plan.stand_ins) == {"llmc_train_only_xyz", "llmc_undeclared_xyz"}
    probe = ("import oldcode\ntry:\n    oldcode.fn(1)\nexcept RuntimeError as e:\n    print(oldcode.VERSION, e)\n")
    out = _in_env(plan.env_dir, probe)
    assert out.startswith("4.37.2 llmc_undeclared_xyz.sub.fn was called, but its package is a stand-in")
