"""Capturing every block's own inputs when the decoder loop reads its layers' outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmc.quant.blockwise import capture_block_inputs


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h, scale=1.0, use_cache=True, past_key_value=None):
        return (self.lin(h) * scale, ("cache", scale))  # transformers 4.3x: (hidden, present)


class Loop(nn.Module):
    """A decoder loop of the older kind: it unpacks each layer's (hidden, cache) output."""

    def __init__(self, n=3):
        super().__init__()
        self.layers = nn.ModuleList(Layer() for _ in range(n))

    def forward(self, h):
        caches = []
        for i, layer in enumerate(self.layers):
            out = layer(h, scale=float(i + 1), use_cache=True, past_key_value=None)
            h, cache = out[0], out[1]
            caches.append(cache)
        return h


class Adapter:
    def __init__(self):
        torch.manual_seed(0)
        self.model = Loop()

    def get_blocks(self):
        return self.model.layers

    def forward_calib(self, inputs):
        return self.model(inputs["h"])


def test_each_block_keeps_its_own_arguments_when_the_loop_reads_layer_outputs():
    a = Adapter()
    notes = []
    batches = [{"h": torch.randn(1, 4, 8)} for _ in range(2)]
    got = capture_block_inputs(a, batches, on_note=notes.append)
    assert notes == []  # no fallback to the first block's arguments
    for bi, b in zip(got, batches):
        assert torch.equal(bi.hidden, b["h"])
        assert bi.calls is not None and [k["scale"] for _, k in bi.calls] == [1.0, 2.0, 3.0]
    assert all(isinstance(layer, Layer) for layer in a.model.layers)  # the blocks are put back


class Block(nn.Module):
    """A decoder block's shape: norm, q/k/v, o, gate/up, down."""

    def __init__(self, d=32):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.gate, self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h, scale=1.0):
        x = self.input_layernorm(h)
        h = h + self.o(torch.tanh(self.q(x) * self.k(x)) + self.v(x)) * scale
        return (h + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)),)


def test_collecting_a_subsets_inputs_stops_each_pass_once_they_are_all_seen():
    """q/k/v's inputs need only the block's first norm: after a first full pass (which shows each
    layer is called once), the later passes stop there; the rows are those of full passes."""
    from llmc.quant.blockwise import BlockInput, collect_inputs

    torch.manual_seed(0)
    block = Block().eval()
    inputs = [BlockInput(torch.randn(1, 6, 32), (), {"scale": 0.5}, None) for _ in range(3)]
    subset = {"q": block.q, "k": block.k, "v": block.v}
    ran = []
    hook = block.down.register_forward_hook(lambda *a: ran.append(1))
    stats = collect_inputs(block, inputs, subset, "cpu")
    hook.remove()
    assert len(ran) == 1  # only the first pass reached the MLP
    with torch.no_grad():
        normed = torch.cat([block.input_layernorm(bi.hidden).reshape(-1, 32) for bi in inputs])
    for name in subset:
        assert torch.equal(stats[name].x, normed)  # every pass gave its rows (18 <= the sampling cap)
    # a subset further down still gets every pass's rows
    down = collect_inputs(block, inputs, {"down": block.down}, "cpu")["down"].x
    assert down.shape == (18, 64)


class CrossBlock(Block):
    """q reads the normed hidden state; k and v read a second (cross-attention) input."""

    def forward(self, h, cross=None, scale=1.0):
        x = self.input_layernorm(h)
        c = cross if cross is not None else x
        h = h + self.o(torch.tanh(self.q(x) * self.k(c)) + self.v(c)) * scale
        return (h + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)),)


def test_layers_handed_one_tensor_share_its_rows_and_its_stream():
    """q/k/v read one tensor: k and v are found to be the same as q, share q's sampled rows and
    the stream (a Hessian) sees the tensor once; cross-attention's k/v pair up apart from q."""
    from llmc.quant.blockwise import BlockInput, collect_inputs

    torch.manual_seed(0)
    block = CrossBlock().eval()
    inputs = [BlockInput(torch.randn(1, 6, 32), (), {"cross": torch.randn(1, 6, 32)}, None) for _ in range(3)]
    streamed = []
    stats = collect_inputs(block, inputs, {"q": block.q, "k": block.k, "v": block.v}, "cpu",
                           on_batch=lambda n, x: streamed.append(n))
    assert (stats["q"].same_as, stats["k"].same_as, stats["v"].same_as) == (None, None, "k")
    assert stats["v"].x is stats["k"].x and not torch.equal(stats["q"].x, stats["k"].x)
    assert streamed == ["q", "k"] * 3
    self_attn = [BlockInput(bi.hidden, (), {}, None) for bi in inputs]
    stats = collect_inputs(block, self_attn, {"q": block.q, "k": block.k, "v": block.v}, "cpu")
    assert [stats[n].same_as for n in "qkv"] == [None, "q", "q"]


def test_wiring_that_changes_between_inputs_is_an_error_not_a_silent_share():
    """k reads q's tensor on the first input and another on the second: rows shared on the first
    would be wrong for the second, so the collection stops and names both layers."""
    from llmc.quant.blockwise import BlockInput, collect_inputs

    block = CrossBlock().eval()
    inputs = [BlockInput(torch.randn(1, 6, 32), (), {}, None),
              BlockInput(torch.randn(1, 6, 32), (), {"cross": torch.randn(1, 6, 32)}, None)]
    with pytest.raises(RuntimeError, match=r"k read the same input as q.*depends on its data"):
        collect_inputs(block, inputs, {"q": block.q, "k": block.k}, "cpu")


@pytest.mark.parametrize("last_only", [False, True])
def test_collecting_keeps_no_layer_input_alive_past_its_use(last_only):
    """A one-pass collection over every layer of a block: by the time down_proj runs, the
    collection holds no reference to q's input tensor (the normed hidden state, dead in a plain
    forward; its rows, all kept here, are a view of its memory), and with last_only no earlier
    pass's input memory lives on through the few rows kept from it."""
    import weakref

    from llmc.quant.blockwise import BlockInput, collect_inputs

    class Freeing(Block):  # the normed state lives only while attention runs, as in transformers' blocks
        def forward(self, h, scale=1.0):
            h = h + self.attention(self.input_layernorm(h)) * scale
            return (h + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)),)

        def attention(self, x):
            return self.o(torch.tanh(self.q(x) * self.k(x)) + self.v(x))

    torch.manual_seed(0)
    block = Freeing().eval()
    inputs = [BlockInput(torch.randn(1, 6, 32), (), {}, None) for _ in range(3)]
    layers = {n: getattr(block, n) for n in ("q", "k", "v", "o", "gate", "up", "down")}
    q_input, down_inputs, alive = [], [], []

    def at_down(mod, args):
        alive.append((q_input[-1]() is not None, [r() is not None for r in down_inputs]))
        down_inputs.append(weakref.ref(args[0].untyped_storage()))

    hooks = [block.q.register_forward_pre_hook(lambda mod, args: q_input.append(weakref.ref(args[0]))),
             block.down.register_forward_pre_hook(at_down)]
    stats = collect_inputs(block, inputs, layers, "cpu", max_rows=4096, last_only=last_only)
    for h in hooks:
        h.remove()
    assert [q for q, _ in alive] == [False] * 3
    if last_only:  # all rows kept otherwise: their input is rightly alive
        assert all(not any(earlier) for _, earlier in alive), alive
    assert stats["down"].x.shape == ((3 if last_only else 18), 64)


def test_float_block_order_is_last_called_first_only_for_subsets_that_run_one_after_another():
    """``true_sequential: false`` quantizes the last-called subset first, so each collects the
    float block's outputs. Where subsets do not run one after another on the first input (cross
    attention's q/k/v grouped with self attention's, a layer called twice, a layer the first input
    skips), no order gives float inputs: ``None`` (the caller collects them all in one pass)."""
    from llmc.models.structure import Subset
    from llmc.quant.blockwise import BlockInput
    from llmc.quant.collect import _subset_order

    def subsets(block, groups):
        return [Subset(name, {n: getattr(block, n) for n in names}, None) for name, names in groups]

    chain = [("attn_in", "qkv"), ("attn_out", "o"), ("mlp_in", ("gate", "up")), ("mlp_out", ("down",))]
    torch.manual_seed(0)
    block = Block().eval()
    inputs = [BlockInput(torch.randn(1, 6, 32), (), {}, None) for _ in range(2)]
    subs = subsets(block, chain)
    assert _subset_order(block, subs, inputs, "cpu", True) == subs
    assert [s.name for s in _subset_order(block, subs, inputs, "cpu", False)] == \
        ["mlp_out", "mlp_in", "attn_out", "attn_in"]
    assert _subset_order(block, subs, [], "cpu", False) is None

    class Twice(Block):  # the attention runs twice: o's calls come between q's
        def forward(self, h, scale=1.0):
            for _ in range(2):
                x = self.input_layernorm(h)
                h = h + self.o(torch.tanh(self.q(x) * self.k(x)) + self.v(x)) * scale
            return (h + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)),)

    twice = Twice().eval()
    assert _subset_order(twice, subsets(twice, chain), inputs, "cpu", False) is None
    cross = CrossBlock().eval()  # k/v read the cross input; q and k/v in one subset still chain
    with_cross = [BlockInput(bi.hidden, (), {"cross": torch.randn(1, 6, 32)}, None) for bi in inputs]
    assert _subset_order(cross, subsets(cross, chain), with_cross, "cpu", False) is not None

    class Skips(Block):  # the MLP's gate only runs when asked: the first input skips it
        def forward(self, h, gated=False):
            x = self.input_layernorm(h)
            h = h + self.o(torch.tanh(self.q(x) * self.k(x)) + self.v(x))
            mid = torch.nn.functional.silu(self.gate(h)) * self.up(h) if gated else self.up(h)
            return (h + self.down(mid),)

    skips = Skips().eval()
    assert _subset_order(skips, subsets(skips, chain), inputs, "cpu", False) is None


def test_rows_kept_from_a_slice_of_a_larger_buffer_do_not_keep_the_buffer():
    """o reads a slice of a wider tensor (a fused projection split in two): the rows kept from
    it, all of them here, are copied, so each pass's wide tensor is freed when the pass moves on."""
    import weakref

    from llmc.quant.blockwise import BlockInput, collect_inputs

    class Fused(nn.Module):
        def __init__(self, d=16):
            super().__init__()
            self.wide, self.o = nn.Linear(d, 2 * d), nn.Linear(d, d)

        def forward(self, h):
            return (h + self.o(self.wide(h)[..., :16]),)

    torch.manual_seed(0)
    block = Fused().eval()
    buffers, alive = [], []

    def wide_out(mod, args, out):  # the earlier passes' wide tensors, still alive?
        alive.append([r() is not None for r in buffers])
        buffers.append(weakref.ref(out.untyped_storage()))

    block.wide.register_forward_hook(wide_out)
    inputs = [BlockInput(torch.randn(1, 5, 16), (), {}, None) for _ in range(3)]
    stats = collect_inputs(block, inputs, {"o": block.o}, "cpu", max_rows=4096)
    assert stats["o"].x.shape == (15, 16)
    assert alive == [[], [False], [False, False]]
