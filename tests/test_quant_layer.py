"""Layer-level tests of the weight quantizers: the integer grid, RTN, GPTQ and AWQ.

The key acceptance checks compare each method's output error ``||x W_q^T - x W^T||`` with
RTN's on the same calibration inputs at realistic sizes (in=256, out=256, 512 rows).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmc.quant import (
    GptqSolver,
    IntQuantizer,
    WeightQuantConfig,
    apply_scales_,
    awq_quantize_,
    check_group_size,
    rtn_,
    search_clip_,
    search_scales,
)

IN, OUT, ROWS = 256, 256, 512
pytestmark = pytest.mark.usefixtures("one_thread")




def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weight(out: int = OUT, inp: int = IN, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=gen(seed)) / inp**0.5


def linear(w: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    fc = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    fc.weight.data.copy_(w)
    if bias is not None:
        fc.bias.data.copy_(bias)
    return fc


def correlated_inputs(rows: int = ROWS, inp: int = IN, seed: int = 1) -> torch.Tensor:
    """Activations with strongly correlated channels (a low-rank signal plus noise), as in LLMs."""
    g = gen(seed)
    mix = torch.randn(32, inp, generator=gen(1234))
    return torch.randn(rows, 32, generator=g) @ mix / 32**0.5 + 0.2 * torch.randn(rows, inp, generator=g)


def out_err(x: torch.Tensor, w_q: torch.Tensor, w: torch.Tensor) -> float:
    return (x @ w_q.float().t() - x @ w.float().t()).norm().item()


def rtn_weight(w: torch.Tensor, cfg: WeightQuantConfig) -> torch.Tensor:
    fc = linear(w)
    rtn_(fc, cfg)
    return fc.weight.data


def gptq_weight(w: torch.Tensor, x: torch.Tensor, cfg: WeightQuantConfig, **kw) -> tuple[torch.Tensor, dict]:
    fc = linear(w)
    g = GptqSolver(fc)
    for chunk in x.split(128):  # several batches: exercises the running average
        g.add_batch(chunk)
    stats = g.quantize_(cfg, **kw)
    return fc.weight.data, stats


def max_levels_per_group(w: torch.Tensor, group: int) -> int:
    groups = w.reshape(w.shape[0], -1, group)
    return max(len(torch.unique(groups[r, c])) for r in range(groups.shape[0]) for c in range(groups.shape[1]))


# ----------------------------------------------------------------------------- quantizer


@pytest.mark.parametrize("bit", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_levels_per_group_bounded(bit, symmetric):
    cfg = WeightQuantConfig(bit=bit, symmetric=symmetric, group_size=32)
    w = weight(32, 128)
    wq = IntQuantizer(cfg).fake(w)
    assert max_levels_per_group(wq, 32) <= 2**bit
    # and the grid is actually used, not collapsed to a handful of values
    assert max_levels_per_group(wq, 32) >= min(2**bit, 32) // 2


def test_symmetric_range_and_grid():
    q = IntQuantizer(WeightQuantConfig(bit=4, symmetric=True, group_size=32))
    assert q.qrange() == (-8, 7)
    assert IntQuantizer(WeightQuantConfig(bit=3, symmetric=True)).qrange() == (-4, 3)
    w = weight(16, 64)
    scale, zero = q.params(w)
    assert torch.all(zero == 0)
    absmax = w.abs().reshape(16, 2, 32).amax(-1)
    torch.testing.assert_close(scale, absmax / 7.5, rtol=0, atol=0)  # compressed-tensors' rule
    codes = q.quant(w, scale, zero)
    # the whole grid [-8, 7] is used: +absmax clamps to 7, -absmax is a tie at -7.5 (-8 or -7
    # depending on the last bit of absmax / scale)
    assert codes.min() == -8 and codes.max() == 7
    # every value lies within half a step of its quantization, the extremes included
    err = (q.fake(w) - w).abs().reshape(16, 2, 32)
    assert torch.all(err <= scale.unsqueeze(-1) / 2 * (1 + 1e-6))
    # negating the weight negates its codes except at the grid's unpaired level: a code -8
    # becomes 7 (8 is clamped), as the grid has one more negative level than positive ones
    neg = q.quant(-w, scale, zero)
    unpaired = (codes == -8) | (neg == -8)
    assert unpaired.any()
    assert torch.equal(neg[~unpaired], -codes[~unpaired])
    assert torch.all(neg[codes == -8] == 7) and torch.all(codes[neg == -8] == 7)


def test_symmetric_int4_matches_compressed_tensors_fake_quantize():
    """Our symmetric int4 quant-dequant equals compressed-tensors' (llm-compressor's) exactly."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    q = IntQuantizer(WeightQuantConfig(bit=4, symmetric=True, group_size=32))
    for seed in range(3):
        w = weight(64, 256, seed=seed)
        wg = w.reshape(64, 8, 32)
        ct_scale, ct_zero = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
        theirs = fake_quantize(w, ct_scale, ct_zero, args)
        scale, zero = q.params(w)
        torch.testing.assert_close(scale, ct_scale, rtol=0, atol=0)
        assert torch.equal(q.fake(w), theirs)


def test_asymmetric_range_and_exact_reconstruction_on_grid():
    q = IntQuantizer(WeightQuantConfig(bit=4, symmetric=False, group_size=32))
    assert q.qrange() == (0, 15)
    out, groups = 8, 4
    g = gen(3)
    codes = torch.randint(0, 16, (out, groups * 32), generator=g)
    codes[:, ::32] = 0  # every group reaches both ends of the grid
    codes[:, 1::32] = 15
    scale = torch.rand(out, groups, generator=g) * 0.1 + 0.01
    zero = torch.randint(1, 15, (out, groups), generator=g).float()  # 0 inside the range
    w = q.dequant(codes, scale, zero)
    s_hat, z_hat = q.params(w)
    torch.testing.assert_close(s_hat, scale, rtol=1e-5, atol=0)
    assert torch.equal(z_hat, zero)
    assert torch.equal(q.quant(w, s_hat, z_hat), codes.to(torch.int32))
    torch.testing.assert_close(q.fake(w), w, rtol=0, atol=1e-6)


def test_param_shapes_per_group_and_per_channel():
    w = weight(24, 256)
    s, z = IntQuantizer(WeightQuantConfig(group_size=64)).params(w)
    assert s.shape == z.shape == (24, 4)
    s, z = IntQuantizer(WeightQuantConfig(granularity="per_channel", group_size=None)).params(w)
    assert s.shape == z.shape == (24, 1)


def test_clip_shrinks_the_range():
    q = IntQuantizer(WeightQuantConfig(bit=4, group_size=32))
    w = weight(8, 64)
    s_full, _ = q.params(w)
    s_half, _ = q.params(w, clip=torch.full((8, 2), 0.5))
    torch.testing.assert_close(s_half, s_full * 0.5)
    with pytest.raises(ValueError, match="clip must have shape"):
        q.params(w, clip=torch.ones(8, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fake_keeps_shape_and_dtype(dtype):
    w = weight(16, 64).to(dtype)
    wq = IntQuantizer(WeightQuantConfig(bit=4, group_size=32)).fake(w)
    assert wq.dtype == dtype and wq.shape == w.shape
    assert not torch.equal(wq, w)
    assert (wq.float() - w.float()).abs().max() < 0.1


def test_zero_group_stays_zero():
    w = weight(4, 64)
    w[:, :32] = 0
    wq = IntQuantizer(WeightQuantConfig(bit=4, group_size=32)).fake(w)
    assert torch.isfinite(wq).all()
    assert torch.equal(wq[:, :32], torch.zeros(4, 32))


def test_check_group_size_message():
    cfg = WeightQuantConfig(bit=4, group_size=48)
    with pytest.raises(ValueError) as exc:
        check_group_size(512, cfg, "model.layers.0.mlp.down_proj")
    msg = str(exc.value)
    assert msg == (
        "layer model.layers.0.mlp.down_proj: group_size 48 does not divide its input width 512; "
        "choose a divisor of 512 such as 32, 64 or 128"
    )
    assert "\n" not in msg
    check_group_size(512, WeightQuantConfig(group_size=128), "ok")  # fits: no error
    check_group_size(500, WeightQuantConfig(granularity="per_channel"), "ok")  # no groups
    # a width with no power-of-two divisor still gets real divisors suggested
    with pytest.raises(ValueError, match=r"input width 99; choose a divisor of 99 such as") as exc:
        check_group_size(99, WeightQuantConfig(group_size=32), "x")
    suggested = [int(t) for t in str(exc.value).split("such as ")[1].replace(" or", ",").split(", ")]
    assert suggested and all(99 % d == 0 for d in suggested)
    # the layer-level entry points use it
    with pytest.raises(ValueError, match="layer fc: group_size 48"):
        rtn_(linear(weight(8, 512)), cfg, name="fc")


@pytest.mark.parametrize("bad", [0, 1, 9, 16])
def test_bit_out_of_range(bad):
    with pytest.raises(ValueError, match=f"got {bad}"):
        WeightQuantConfig(bit=bad)
    cfg = WeightQuantConfig(bit=4)
    cfg.bit = bad  # a config mutated after construction is caught too
    with pytest.raises(ValueError, match=f"got {bad}"):
        check_group_size(256, cfg, "fc")


def test_rtn_matches_quantizer():
    cfg = WeightQuantConfig(bit=3, group_size=64)
    w = weight()
    torch.testing.assert_close(rtn_weight(w, cfg), IntQuantizer(cfg).fake(w), rtol=0, atol=0)


# ----------------------------------------------------------------------------------- GptqSolver


def _reference_gptq(w: torch.Tensor, x: torch.Tensor, cfg: WeightQuantConfig, percdamp: float) -> torch.Tensor:
    """Textbook sequential OBS/GPTQ in float64: explicit inverse Hessian, rank-1 downdates."""
    q = IntQuantizer(cfg)
    W = w.double().clone()
    H = 2.0 / x.shape[0] * x.double().t() @ x.double()
    H += percdamp * H.diag().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    gs = cfg.group_size if cfg.granularity == "per_group" else W.shape[1]
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        if i % gs == 0:
            scale, zero = q.row_params(W[:, i : i + gs])
        qi = q.fake_with(W[:, i : i + 1], scale, zero).double().squeeze(1)
        Q[:, i] = qi
        W -= ((W[:, i] - qi) / Hinv[i, i]).unsqueeze(1) * Hinv[i].unsqueeze(0)
        Hinv -= Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]
    return Q.float()


@pytest.mark.parametrize("cfg", [
    WeightQuantConfig(bit=4, granularity="per_channel", group_size=None),
    WeightQuantConfig(bit=3, group_size=16),
])
def test_gptq_matches_textbook_algorithm(cfg):
    w, x = weight(48, 64, seed=5), correlated_inputs(256, 64, seed=6)
    ours, _ = gptq_weight(w, x, cfg, blocksize=16)  # several lazy blocks
    ref = _reference_gptq(w, x, cfg, percdamp=0.01)
    # float32 vs float64 may flip a rare rounding decision (which then propagates along its row)
    same_rows = (torch.isclose(ours, ref, atol=1e-5).all(dim=1)).float().mean().item()
    assert same_rows >= 0.9
    assert out_err(x, ours, w) <= out_err(x, ref, w) * 1.02


def test_gptq_blocksize_only_changes_speed():
    cfg = WeightQuantConfig(bit=4, group_size=32)
    w, x = weight(64, 128), correlated_inputs(256, 128)
    a, sa = gptq_weight(w, x, cfg, blocksize=32)
    b, sb = gptq_weight(w, x, cfg, blocksize=128)
    assert torch.isclose(a, b, atol=1e-5).float().mean() > 0.99
    assert sa["error"] == pytest.approx(sb["error"], rel=1e-2)


@pytest.mark.parametrize("bit", [4, 3])
def test_gptq_beats_rtn(bit):
    cfg = WeightQuantConfig(bit=bit, group_size=32)
    w, x = weight(), correlated_inputs()
    wq, stats = gptq_weight(w, x, cfg)
    e_rtn, e_gptq = out_err(x, rtn_weight(w, cfg), w), out_err(x, wq, w)
    assert e_gptq < 0.6 * e_rtn, (e_gptq, e_rtn)
    # it generalises to fresh inputs of the same distribution
    x_new = correlated_inputs(seed=99)
    assert out_err(x_new, wq, w) < 0.6 * out_err(x_new, rtn_weight(w, cfg), w)
    # weights sit on the per-group grid
    assert max_levels_per_group(wq, 32) <= 2**bit
    assert stats["error"] > 0 and stats["seconds"] >= 0 and stats["nsamples"] == ROWS


@pytest.mark.parametrize("kw", [dict(actorder=True), dict(actorder=True, static_groups=True),
                                dict(static_groups=True)])
def test_gptq_actorder_static_groups_beat_rtn(kw):
    cfg = WeightQuantConfig(bit=4, group_size=32)
    w, x = weight(), correlated_inputs()
    # give the inputs very unequal magnitudes so act-order has something to sort
    x = x * torch.linspace(0.2, 3.0, IN)[torch.randperm(IN, generator=gen(7))]
    wq, _ = gptq_weight(w, x, cfg, **kw)
    assert out_err(x, wq, w) < 0.6 * out_err(x, rtn_weight(w, cfg), w)
    if kw.get("static_groups"):
        # static groups keep the standard layout: consecutive original columns share a grid
        assert max_levels_per_group(wq, 32) <= 16


@pytest.mark.parametrize("kw", [dict(), dict(actorder=True, static_groups=True), dict(actorder=True)])
def test_gptq_layers_sharing_one_hessian_equal_each_quantized_alone(kw):
    """q/k/v read one input: quantized together against one factored Hessian, each weight is
    what quantizing it alone gives, bit for bit (dead inputs and act-order included)."""
    cfg = WeightQuantConfig(bit=4, group_size=32)
    x = correlated_inputs() * torch.linspace(0.2, 3.0, IN)[torch.randperm(IN, generator=gen(7))]
    x[:, 5] = 0.0  # an input that never fires
    ws = {n: weight(o, IN, seed=s) for n, o, s in (("q", 64, 1), ("k", 32, 2), ("v", 32, 3))}
    alone = {n: gptq_weight(w, x, cfg, **kw) for n, w in ws.items()}
    layers = {n: linear(w) for n, w in ws.items()}
    g = GptqSolver(layers["q"], "q")
    for chunk in x.split(128):  # as gptq_weight feeds it
        g.add_batch(chunk)
    together = g.quantize_layers_(layers, cfg, **kw)
    for n in ws:
        assert torch.equal(layers[n].weight.data, alone[n][0])
        assert together[n]["error"] == alone[n][1]["error"]
    with pytest.raises(RuntimeError, match="already called"):
        g.quantize_layers_(layers, cfg)
    g2 = GptqSolver(layers["q"], "q")
    g2.add_batch(x)
    with pytest.raises(ValueError, match="wide"):
        g2.quantize_layers_({"down": linear(weight(8, 2 * IN))}, cfg)


def test_gptq_symmetric_and_per_channel_beat_rtn():
    w, x = weight(), correlated_inputs()
    for cfg in (WeightQuantConfig(bit=4, symmetric=True, group_size=64),
                WeightQuantConfig(bit=4, granularity="per_channel", group_size=None)):
        wq, _ = gptq_weight(w, x, cfg)
        assert out_err(x, wq, w) < 0.6 * out_err(x, rtn_weight(w, cfg), w)


def test_gptq_dead_columns_dtype_and_lifecycle():
    cfg = WeightQuantConfig(bit=4, group_size=32)
    x = correlated_inputs(256, 64)
    x[:, 5] = 0  # an input that never fires
    fc = linear(weight(32, 64)).to(torch.bfloat16)
    g = GptqSolver(fc)
    g.add_batch(x.to(torch.bfloat16).reshape(4, 64, 64))  # (batch, seq, hidden) is fine
    assert g.nsamples == 256
    g.quantize_(cfg)
    assert fc.weight.dtype == torch.bfloat16
    assert torch.isfinite(fc.weight.float()).all()
    assert torch.all(fc.weight[:, 5] == 0)
    assert g.H is None  # Hessian freed
    with pytest.raises(RuntimeError, match="already"):
        g.quantize_(cfg)
    with pytest.raises(RuntimeError, match="no calibration data"):
        GptqSolver(linear(weight(8, 64))).quantize_(cfg)
    with pytest.raises(ValueError, match="input width 32"):
        GptqSolver(linear(weight(8, 64))).add_batch(torch.randn(4, 32))


# ------------------------------------------------------------------------------------ AWQ


class RMSNorm(nn.Module):
    """Llama-style RMSNorm: ``x / rms(x) * weight``."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class OffsetRMSNorm(RMSNorm):
    """Gemma-style RMSNorm: ``x / rms(x) * (1 + weight)``."""

    def forward(self, h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)


def outlier_setup(seed: int = 0):
    """Hidden states, an RMSNorm whose weight makes 8 channels 20x larger, and the normed x."""
    g = gen(seed)
    h = torch.randn(ROWS, IN, generator=g)
    norm = RMSNorm(IN)
    norm.weight.data[torch.randperm(IN, generator=g)[:8]] = 20.0
    with torch.no_grad():
        x = norm(h)
    return h, norm, x


@pytest.mark.parametrize("bit", [4, 3])
def test_awq_beats_rtn_with_outlier_channels(bit):
    cfg = WeightQuantConfig(bit=bit, group_size=32)
    h, norm, x = outlier_setup()
    w = weight(seed=2)
    ref = x @ w.t()
    e_rtn = out_err(x, rtn_weight(w, cfg), w)

    fc = linear(w)
    scales, ratio, errors = search_scales(x, [fc], cfg)
    assert scales.shape == (IN,) and ratio > 0
    assert set(errors) == {i / 20 for i in range(20)}
    assert errors[ratio] == min(errors.values()) < errors[0.0]  # ratio 0 is RTN
    apply_scales_(norm, [fc], scales)
    with torch.no_grad():
        x_scaled = norm(h)
        torch.testing.assert_close(fc(x_scaled), ref, rtol=1e-4, atol=1e-4)  # fold is exact
        awq_quantize_(fc, cfg)
        e_awq = (fc(x_scaled) - ref).norm().item()
    assert e_awq < 0.75 * e_rtn, (e_awq, e_rtn)


def test_awq_shared_scale_over_several_layers():
    cfg = WeightQuantConfig(bit=4, group_size=32)
    _, _, x = outlier_setup(seed=1)
    layers = [linear(weight(seed=s)) for s in (3, 4, 5)]
    _, _, errors = search_scales(x, layers, cfg, n_grid=10)
    assert len(errors) == 10
    # the loss sums over layers: each layer's RTN error contributes to ratio 0
    rtn_loss = sum((x @ rtn_weight(fc.weight.data, cfg).t() - x @ fc.weight.data.t()).pow(2).mean().item()
                   for fc in layers)
    assert errors[0.0] == pytest.approx(rtn_loss, rel=1e-4)
    assert min(errors.values()) < errors[0.0]
    with pytest.raises(ValueError, match="one input width"):
        search_scales(x, [layers[0], linear(weight(8, 128))], cfg)


def test_awq_clip_search():
    cfg = WeightQuantConfig(bit=3, group_size=32)
    h, norm, x = outlier_setup(seed=2)
    w = weight(seed=3)
    fc = linear(w)
    scales, _, _ = search_scales(x, [fc], cfg)
    apply_scales_(norm, [fc], scales)
    with torch.no_grad():
        xs = norm(h)
    w_scaled = fc.weight.data.clone()
    clip = search_clip_(fc, xs, cfg)
    assert torch.equal(fc.weight.data, w_scaled)  # search only
    assert clip.shape == (OUT, IN // 32)
    assert clip.min() >= 0.55 - 1e-6 and clip.max() <= 1.0
    assert (clip < 1).any()

    # each group's own output error is no worse than without clipping (1.0 is a candidate)
    q = IntQuantizer(cfg)
    xg = xs.reshape(ROWS, -1, 32)

    def group_err(wq):
        d = (w_scaled - wq).reshape(OUT, -1, 32)
        return torch.einsum("ngk,ogk->ong", xg, d).pow(2).mean(dim=1)

    err_clip, err_none = group_err(q.fake(w_scaled, clip)), group_err(q.fake(w_scaled))
    assert torch.all(err_clip <= err_none * (1 + 1e-4) + 1e-7)
    assert err_clip.sum() < 0.95 * err_none.sum()

    # end to end, clipping lowers the layer's output error further
    ref = xs @ w_scaled.t()
    e_plain = (xs @ q.fake(w_scaled).t() - ref).norm()
    awq_quantize_(fc, cfg, clip=clip)
    e_clip = (xs @ fc.weight.data.t() - ref).norm()
    assert e_clip < e_plain


# -------------------------------------------------------------------------------- folding


def _random_scales(n: int, seed: int = 11) -> torch.Tensor:
    return torch.rand(n, generator=gen(seed)) * 4 + 0.25


@pytest.mark.parametrize("make_norm", [
    lambda: nn.LayerNorm(IN),
    lambda: RMSNorm(IN),
    lambda: OffsetRMSNorm(IN),
], ids=["layernorm", "rmsnorm", "offset-rmsnorm"])
def test_fold_into_norm_keeps_function(make_norm):
    norm = make_norm()
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.5 * torch.randn(IN, generator=gen(12)))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(0.5 * torch.randn(IN, generator=gen(14)))
    fcs = [linear(weight(64, IN, seed=s), bias=torch.randn(64, generator=gen(s))) for s in (20, 21)]
    h = torch.randn(32, IN, generator=gen(13)) * 3
    with torch.no_grad():
        before = [fc(norm(h)) for fc in fcs]
        apply_scales_(norm, fcs, _random_scales(IN))
        after = [fc(norm(h)) for fc in fcs]
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # and the scales really moved into the weights
    assert not torch.allclose(fcs[0].weight, linear(weight(64, IN, seed=20)).weight)


def test_fold_into_previous_linear_keeps_function():
    up = linear(weight(IN, 128, seed=30), bias=torch.randn(IN, generator=gen(31)))
    down = linear(weight(64, IN, seed=32), bias=torch.randn(64, generator=gen(33)))
    x = torch.randn(16, 128, generator=gen(34))
    with torch.no_grad():
        before = down(torch.relu(up(x)))  # positive-homogeneous activation in between is fine
        apply_scales_(up, [down], _random_scales(IN))
        after = down(torch.relu(up(x)))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_fold_rejects_unfoldable_ops():
    fc = linear(weight(8, IN))
    with pytest.raises(TypeError, match="GELU"):
        apply_scales_(nn.GELU(), [fc], torch.ones(IN))
    with pytest.raises(TypeError, match="no affine weight"):
        apply_scales_(nn.LayerNorm(IN, elementwise_affine=False), [fc], torch.ones(IN))
    with pytest.raises(ValueError, match="outputs"):
        apply_scales_(linear(weight(128, 64)), [fc], torch.ones(IN))


# --- calib_algo: mse ----------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [True, False])
def test_the_mse_search_picks_each_groups_best_factor_and_lowers_the_rounding_error(symmetric):
    from llmc.quant.quantizer import MSE_NORM, mse_factors

    torch.manual_seed(0)
    w = torch.randn(24, 96) * 0.02
    w[5] = 0.0  # an all-zero row keeps factor 1 (every factor ties)
    q = IntQuantizer(WeightQuantConfig(bit=4, symmetric=symmetric, group_size=32, calib_algo="mse"))
    clip = q.search_clip(w)
    assert clip.shape == (24, 3) and torch.all(clip[5] == 1.0)
    # brute force: every factor's error on every group; the pick is the first least one
    errs = torch.stack([
        (q.fake(w, torch.full((24, 3), float(p))).float() - w).reshape(24, 3, 32).abs().pow(MSE_NORM).sum(-1)
        for p in mse_factors()])
    first_best = mse_factors()[errs.argmin(0)]
    assert torch.equal(clip, first_best)
    assert (clip < 1).float().mean() > 0.5  # Gaussian groups mostly gain from a narrower range
    e_minmax = (q.fake(w) - w).pow(2).sum()
    e_mse = (q.fake(w, clip) - w).pow(2).sum()
    assert e_mse < 0.95 * e_minmax


def test_rtn_with_mse_lowers_the_output_error_and_needs_no_data():
    calib_x = correlated_inputs()
    base = linear(weight(seed=1))
    errs = {}
    for algo in ("minmax", "mse"):
        lin = nn.Linear(IN, OUT, bias=False)
        lin.weight.data.copy_(base.weight.data)
        scale, zero = rtn_(lin, WeightQuantConfig(bit=4, symmetric=True, group_size=64, calib_algo=algo))
        # the recorded parameters reproduce the weight (exports read them)
        back = IntQuantizer(WeightQuantConfig(bit=4, symmetric=True, group_size=64)).fake_with(
            base.weight.data, scale, zero)
        assert torch.equal(back, lin.weight.data)
        errs[algo] = (calib_x @ (lin.weight - base.weight).T).pow(2).sum().item()
    assert errs["mse"] < 0.95 * errs["minmax"]


@pytest.mark.parametrize("kw", [dict(), dict(actorder=True), dict(actorder=True, static_groups=True)],
                         ids=["dynamic", "dynamic-actorder", "static-actorder"])
def test_gptq_with_mse_has_a_lower_loss_than_with_minmax(kw):
    calib_x = correlated_inputs()
    base = linear(weight(seed=2))
    loss = {}
    for algo in ("minmax", "mse"):
        lin = nn.Linear(IN, OUT, bias=False)
        lin.weight.data.copy_(base.weight.data)
        g = GptqSolver(lin)
        g.add_batch(calib_x)
        res = g.quantize_(WeightQuantConfig(bit=4, symmetric=False, group_size=64, calib_algo=algo), **kw)
        loss[algo] = (calib_x @ (lin.weight - base.weight).T).pow(2).sum().item()
        if res["scale"] is not None:  # the recorded layout reproduces the weight
            back = IntQuantizer(WeightQuantConfig(bit=4, symmetric=False, group_size=64)).fake_with(
                lin.weight.data, res["scale"], res["zero"])
            assert torch.allclose(back, lin.weight.data, atol=1e-6)
    assert loss["mse"] < 0.985 * loss["minmax"], loss
