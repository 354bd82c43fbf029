"""The Try step's question: the float and the quantized model answer it, each through the adapter."""

from __future__ import annotations

import tempfile
from pathlib import Path


def compare_answers(model_type: str, float_dir: Path, quant_dir: Path, image, question: str, device="cpu",
                    models_dir: Path | None = None, log=None) -> tuple[str, str]:
    """Float and quantized answers, each model loaded through the adapter."""
    from llmc.eval.vqa import VQARequest
    from llmc.models import get_model_class

    cls = get_model_class(model_type, [models_dir] if models_dir is not None else [])
    req = [VQARequest(question, [image], {"max_new_tokens": 16})]
    answers = []
    for label, path in (("float", float_dir), ("quantized", quant_dir)):
        if log:
            log(f"loading the {label} model from {path}")
        answers.append(cls(path, "auto", device).answer(req)[0])
        if log:
            log(f"{label}: {answers[-1]!r}")
    return answers[0], answers[1]


def compare_answers_in_child(model_type: str, float_dir: Path, quant_dir: Path, image, question: str,
                             device="cpu", models_dir: Path | None = None, log=None, cancelled=None,
                             on_start=None) -> tuple[str, str]:
    """:func:`compare_answers` in a child process that ``cancelled()`` kills (WizardError)."""
    from .child import run_child

    with tempfile.TemporaryDirectory(prefix="llmc-wizard-ask-") as tmp:
        if not isinstance(image, (str, Path)):
            path = Path(tmp) / "image.png"
            image.save(path)
            image = path
        args = ["--model-type", model_type, "--float", float_dir, "--quant", quant_dir, "--image", image,
                f"--question={question}", "--device", device]  # "=": a question may start with "-"
        if models_dir is not None:
            args += ["--models-dir", models_dir]
        res = run_child("wizard.services.ask", args, what="asking both models", on_line=log, cancelled=cancelled,
                        on_start=on_start)
    return res["float"], res["quantized"]


def main(argv=None) -> int:
    import argparse

    from .child import child_main
    from .errors import WizardError

    ap = argparse.ArgumentParser(prog="python -m wizard.services.ask", description=__doc__)
    ap.add_argument("--model-type", required=True)
    ap.add_argument("--float", required=True, type=Path, dest="float_dir")
    ap.add_argument("--quant", required=True, type=Path)
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--question", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models-dir", type=Path)
    a = ap.parse_args(argv)

    def ask() -> dict:
        from PIL import Image

        if not a.image.exists():
            raise WizardError(f"image {a.image} not found", "enter an existing image file")
        img = Image.open(a.image).convert("RGB")
        f, q = compare_answers(a.model_type, a.float_dir, a.quant, img, a.question, a.device, a.models_dir, log=print)
        return {"float": f, "quantized": q}

    return child_main(ask)


if __name__ == "__main__":
    raise SystemExit(main())
