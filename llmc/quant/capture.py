"""Capturing each decoder block's inputs on the calibration data (one pass of the model with every
block replaced by a recorder), for :mod:`llmc.quant.blockwise`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.base import BaseModel


class _Stop(Exception):
    pass


@dataclass
class Added:
    """What a decoder loop added to a block's output before the next block read it, kept as the
    changed rows only (deepstack features touch the image positions alone): ``mask`` (batch,
    seq) marks them, ``rows`` holds their additions in the mask's row-major order."""

    mask: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def of(cls, delta: torch.Tensor) -> Added | None:
        mask = delta.detach().ne(0).any(-1)
        return cls(mask, delta.detach()[mask]) if bool(mask.any()) else None

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        mask = self.mask.to(out.device)
        out[mask] = out[mask] + self.rows.to(out.device, out.dtype)
        return out

    @staticmethod
    def cat(parts: list[Added]) -> Added:
        """The additions of inputs joined along the batch (same sequence length)."""
        return Added(torch.cat([p.mask for p in parts]), torch.cat([p.rows for p in parts]))


@dataclass
class BlockInput:
    """One calibration batch at a block's input: the hidden states and the block's own positional
    and keyword inputs. ``calls[j]`` holds block ``j``'s ``(args, kwargs)`` for this batch: blocks
    differ (sliding-window vs global masks and rotary tables, cross-attention states), and the
    decoder loop computed each one's; ``None`` when every block takes the same. ``adds[j]`` is what
    the decoder loop adds to block ``j - 1``'s output before block ``j`` reads it (Qwen3-VL's
    deepstack: image features at the image positions), as the capture saw it; absent: nothing."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    calls: list[tuple[tuple, dict]] | None = None
    adds: dict[int, Added] | None = None

    def for_block(self, j: int, hidden: torch.Tensor) -> BlockInput:
        """``hidden`` as the input of block ``j``, with that block's own arguments."""
        if self.calls is None:
            return BlockInput(hidden, self.args, self.kwargs, None, self.adds)
        args, kwargs = self.calls[j]
        return BlockInput(hidden, args, kwargs, self.calls, self.adds)

    def into_block(self, j: int, out: torch.Tensor) -> BlockInput:
        """Block ``j - 1``'s output ``out`` as the input of block ``j``: with what the decoder loop
        adds between them, and block ``j``'s own arguments."""
        add = self.adds.get(j) if self.adds else None
        return self.for_block(j, out if add is None else add.apply(out))


def _to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _keep(kwargs: dict) -> dict:
    # No KV cache: a cache object kept with the inputs would grow with every replay of the block,
    # and later replays would attend to keys and values of earlier weights.
    kwargs = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS and not _is_cache(v)}
    kwargs["use_cache"] = False
    return kwargs


class _Catcher(nn.Module):
    """Stands in for block ``index`` during capture: records its inputs and passes the hidden
    states on unchanged (the decoder loop computes every block's own masks and rotary tables
    without needing real outputs); the last one stops the forward pass."""

    def __init__(self, inner: nn.Module, index: int, store: list, last: bool, run: bool = False,
                 passed: dict | None = None):
        super().__init__()
        self.inner, self.index, self.store, self.last, self.run = inner, index, store, last, run
        #: shared by the recorders of one pass: the hidden states the previous block handed on
        self.passed = passed if passed is not None else {}
        # decoder loops may read attributes of their layers (e.g. attention_type)
        for attr in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def forward(self, hidden_states, *args, **kwargs):
        self.store.append((self.index, hidden_states.detach() if self.index == 0 else None, args, _keep(kwargs),
                           self._added(hidden_states)))
        if self.last:
            raise _Stop
        # ``run``: the real block (a decoder loop that reads its layers' outputs, e.g. the
        # (hidden, cache) tuples of transformers 4.3x, gets exactly what it expects)
        out = self.inner(hidden_states, *args, **kwargs) if self.run else hidden_states
        self.passed["out"] = out[0] if isinstance(out, (tuple, list)) else out
        return out

    def _added(self, hidden_states: torch.Tensor) -> Added | None:
        """What the decoder loop added to the previous block's output before this block (None:
        it handed the very tensor on, or an equal one)."""
        prev = self.passed.get("out")
        if self.index == 0 or prev is None or hidden_states is prev or not torch.is_tensor(prev) \
                or prev.shape != hidden_states.shape:
            return None
        return Added.of(hidden_states - prev)


@torch.no_grad()
def capture_block_inputs(adapter: BaseModel, batches: list[dict],
                         on_note: Callable[[str], None] | None = None) -> list[BlockInput]:
    """The first block's inputs for every calibration batch, each with every block's own
    arguments (:attr:`BlockInput.calls`). One pass of the model in which every block is replaced
    by a recorder that passes its input through: only the embeddings (and the vision side) run.

    Should the decoder loop need real block outputs to go on (older transformers and custom code
    read the layer output's structure), the blocks run for real during the capture. Should even
    that fail, the capture falls back to the first block's arguments for every block (``calls``
    None) and says so through ``on_note``. An error before the first block propagates."""
    blocks = adapter.get_blocks()
    n = len(blocks)
    originals = [blocks[j] for j in range(n)]
    out: list[BlockInput] = []
    run = False  # pass-through first; the real blocks once a decoder loop needs their outputs
    for inputs in batches:
        for _ in (False, True):
            store: list = []
            passed: dict = {}
            for j in range(n):
                blocks[j] = _Catcher(originals[j], j, store, last=j == n - 1, run=run, passed=passed)
            try:
                adapter.forward_calib(inputs)
                break
            except _Stop:
                break
            except Exception as e:
                if not store:  # the model failed before its first block: that is the error to see
                    raise
                if not run:
                    run = True  # the decoder loop broke on a pass-through block: run them
                    continue
                # even the real blocks did not get through: every block replays the first one's inputs
                if on_note is not None:
                    on_note(f"per-block inputs not captured ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            "every block replays the first block's masks and position inputs")
                    on_note = None
                store = store[:1]
                break
            finally:
                for j in range(n):
                    blocks[j] = originals[j]
        if not store or store[0][0] != 0:
            raise RuntimeError("the first decoder block was not reached for every calibration batch")
        _, hidden, args, kwargs, _ = store[0]
        calls = [(a, k) for _, _, a, k, _ in store] if len(store) == n else None
        adds = {j: add for j, _, _, _, add in store if add is not None} if calls is not None else {}
        out.append(BlockInput(hidden, args, kwargs, calls, adds or None))
    return out


_CACHE_KWARGS = ("past_key_values", "past_key_value", "cache", "layer_past")


def _is_cache(value) -> bool:
    return any(c.__name__.endswith("Cache") for c in type(value).__mro__)
