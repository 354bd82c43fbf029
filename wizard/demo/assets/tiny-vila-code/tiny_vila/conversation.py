"""Conversation templates as VILA 1.5's ``llava.conversation`` defines them (the styles the 1.5
models use). tiny-vila was trained on ``vicuna_v1_nosys``: its ``default_conversation``."""

from __future__ import annotations

import dataclasses
from enum import Enum, auto


class SeparatorStyle(Enum):
    AUTO = auto()
    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()
    MISTRAL = auto()
    LLAMA_3 = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple
    messages: list
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"

    def get_prompt(self) -> str:
        messages = self.messages
        if self.sep_style == SeparatorStyle.SINGLE:
            ret = self.system + self.sep
            for role, message in messages:
                ret += f"{role}: {message}{self.sep}" if message else f"{role}:"
        elif self.sep_style == SeparatorStyle.TWO:
            seps = [self.sep, self.sep2]
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        elif self.sep_style == SeparatorStyle.PLAIN:
            seps = [self.sep, self.sep2]
            ret = self.system
            for i, (_, message) in enumerate(messages):
                ret += f"{message}{seps[i % 2]}" if message else ""
        else:
            raise ValueError(f"Invalid style: {self.sep_style}")
        return ret

    def append_message(self, role, message) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return Conversation(system=self.system, roles=self.roles, messages=[[x, y] for x, y in self.messages],
                            offset=self.offset, sep_style=self.sep_style, sep=self.sep, sep2=self.sep2,
                            version=self.version)


conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"), version="v1", messages=(), offset=0,
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")

conv_vicuna_v1_nosys = Conversation(
    system="", roles=("USER", "ASSISTANT"), version="v1_nosys", messages=(), offset=0,
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")

conv_llava_v1 = Conversation(
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"), version="v1", messages=(), offset=0,
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")

conv_llava_plain = Conversation(
    system="", roles=("", ""), messages=(), offset=0, sep_style=SeparatorStyle.PLAIN, sep="\n")

default_conversation = conv_vicuna_v1_nosys
conv_templates = {
    "default": conv_vicuna_v1_nosys,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "vicuna_v1_nosys": conv_vicuna_v1_nosys,
    "llava_v1": conv_llava_v1,
    "plain": conv_llava_plain,
}
