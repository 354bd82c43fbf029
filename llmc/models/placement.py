"""Where a model's weights live while it is evaluated and quantized.

* ``single`` (default): the whole model on the compute device.
* ``offload``: the decoder blocks stay in CPU memory; everything else (embeddings, vision tower,
  projector, final norm, head) sits on the compute device, and each block is moved to the
  device for its own forward pass (evaluation, calibration) or while it is quantized, then
  moved back. GPU memory holds one block at a time, so a model larger than the card quantizes.
* ``auto``: the blocks are spread over several GPUs by accelerate (``infer_auto_device_map``
  + ``dispatch_model``, one block never split); forward passes hop from card to card and each
  block is quantized on the card that holds it. ``max_memory`` caps each card.

Blocks are real tensors in every mode (no meta/disk offload), so quantization can change
their weights in place.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

MODES = ("single", "offload", "auto")


@dataclass
class Placement:
    """The result of :func:`place`: the mode, the main device and each block's device."""

    mode: str
    device: torch.device
    block_devices: list[torch.device] = field(default_factory=list)
    _handles: list = field(default_factory=list, repr=False)
    _pinned: set = field(default_factory=set, repr=False)

    def block_device(self, i: int) -> torch.device:
        """Where block ``i`` is quantized."""
        return self.block_devices[i] if self.block_devices else self.device

    @property
    def offload(self) -> bool:
        return self.mode == "offload"

    def summary(self) -> str:
        if self.mode == "offload":
            return f"offload: blocks in CPU memory, one at a time on {self.device}"
        if self.mode == "auto":
            counts = Counter(str(d) for d in self.block_devices)
            return "auto: blocks over " + ", ".join(f"{d} ({n})" for d, n in counts.items())
        return f"single: whole model on {self.device}"

    def pin(self, block: nn.Module) -> None:
        """``offload``: move ``block`` to the device and keep it there until :meth:`unpin`."""
        self._pinned.add(id(block))
        block.to(self.device)

    def unpin(self, block: nn.Module) -> None:
        self._pinned.discard(id(block))
        block.to("cpu")

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _block_class_names(adapter) -> list[str]:
    names = {type(b).__name__ for b in adapter.get_blocks()}
    vision = adapter.get_vision_tower()
    if vision is not None:  # never split a vision encoder layer either
        for m in vision.modules():
            if isinstance(m, nn.ModuleList):
                names.update(type(x).__name__ for x in m)
    return sorted(names)


def auto_device_map(adapter, max_memory: dict | None = None) -> dict[str, str | int]:
    """accelerate's device map of ``adapter``'s model (blocks never split).

    ``max_memory`` (``{0: "20GiB", 1: "20GiB"}``) caps the cards; without it every visible GPU
    is used. Raises ``ValueError`` naming the fix when a block would land on the CPU or disk.
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = _block_class_names(adapter)
    if max_memory is None:
        if not torch.cuda.is_available():
            raise ValueError("model.device_map: auto needs GPUs; none is visible (use the default placement on CPU)")
        max_memory = {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
    # balanced over the cards (as transformers' device_map="auto"), within the given caps
    caps = get_balanced_memory(adapter.mm_model, max_memory=dict(max_memory), no_split_module_classes=no_split)
    dm = infer_auto_device_map(adapter.mm_model, max_memory=caps, no_split_module_classes=no_split)
    off = sorted(k for k, v in dm.items() if v in ("cpu", "disk"))
    if off:
        raise ValueError(f"model.device_map: auto: the model does not fit on the GPUs given "
                         f"({', '.join(map(str, max_memory))}); {off[0]} would go to {dm[off[0]]}. "
                         "Use model.offload: true (blocks in CPU memory) or more/larger GPUs")
    return dm


def _module_device(dm: dict, name: str):
    """The device ``dm`` gives module ``name`` (its own entry or its closest ancestor's)."""
    parts = name.split(".")
    for k in range(len(parts), -1, -1):
        key = ".".join(parts[:k])
        if key in dm:
            return dm[key]
    raise KeyError(name)


def _as_device(d) -> torch.device:
    return torch.device(f"cuda:{d}" if isinstance(d, int) else d)


def place(adapter, mode: str = "single", device: str | torch.device | None = None,
          max_memory: dict | None = None) -> Placement:
    """Put ``adapter``'s model (loaded on the CPU) where ``mode`` says; see the module doc."""
    if mode not in MODES:
        raise ValueError(f"unknown placement {mode!r}; choose from {', '.join(MODES)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if mode == "single":
        adapter.to(device)
        return Placement(mode, device)

    blocks = adapter.get_blocks()
    if mode == "offload":
        block_ids = {id(p) for p in blocks.parameters()} | {id(b) for b in blocks.buffers()}
        for p in adapter.mm_model.parameters():
            if id(p) not in block_ids:
                p.data = p.data.to(device)
        for mod in adapter.mm_model.modules():  # buffers outside the blocks (e.g. rotary tables)
            for name, b in list(mod.named_buffers(recurse=False)):
                if id(b) not in block_ids:
                    mod._buffers[name] = b.to(device)
        blocks.to("cpu")
        adapter.device = device
        pl = Placement(mode, device, [device] * len(blocks))

        def to_device(m, args):
            if id(m) not in pl._pinned:
                m.to(device)

        def to_cpu(m, args, out):
            if id(m) not in pl._pinned:
                m.to("cpu")

        for block in blocks:
            pl._handles.append(block.register_forward_pre_hook(to_device))
            pl._handles.append(block.register_forward_hook(to_cpu))
        return pl

    from accelerate import dispatch_model

    dm = auto_device_map(adapter, max_memory)
    names = {id(m): n for n, m in adapter.mm_model.named_modules()}
    block_devices = [_as_device(_module_device(dm, names[id(b)])) for b in blocks]
    dispatch_model(adapter.mm_model, device_map=dm)
    adapter.device = _as_device(_module_device(dm, names[id(adapter.get_embed_layers()[0])]))
    return Placement(mode, adapter.device, block_devices)


__all__ = ["MODES", "Placement", "auto_device_map", "place"]
