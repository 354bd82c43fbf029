"""The single conversation template of tiny-vila."""

from .constants import DEFAULT_IMAGE_TOKEN

SYSTEM = ""
USER, ASSISTANT = "USER", "ASSISTANT"


def build_prompt(question: str, with_image: bool = True) -> str:
    """``USER: <image>\\n{question} ASSISTANT:`` (the answer follows after a space)."""
    image = f"{DEFAULT_IMAGE_TOKEN}\n" if with_image and DEFAULT_IMAGE_TOKEN not in question else ""
    return f"{USER}: {image}{question} {ASSISTANT}:"
