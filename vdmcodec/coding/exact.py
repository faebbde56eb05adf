"""Arithmetic that gives the same bits on every CPU: the codec's ``portable`` network.

A float32 network's output depends on the machine in its last bits: oneDNN and ATen pick
kernels by SIMD level (AVX2, AVX-512, AMX) and thread count, and the kernels sum in
different orders; libm / SLEEF / numpy evaluate exp and sin differently per SIMD path. A
bits-back chain turns any such difference into a decoding failure (docs/format.md,
"Determinism"). This module removes both sources:

* Sums are exact. Every convolution and linear layer takes its input rounded to a fixed
  grid (2^-ACT_FRAC_BITS, clamped to +-2^ACT_INT_BITS; the first convolution, which sees
  the latent and its Fourier features, 2^-IN_FRAC_BITS) and weights rounded to integers
  times a power of two chosen per layer, and runs in float64 on those integers: each
  product is an integer below 2^53 and so is every partial sum (the bit budget is checked
  per layer), so the result is the same in any summation order, blocking or thread count.
  Outputs go back onto the activation grid; GroupNorm's sums run in int64.
* Elementwise functions (exp, log, sigmoid, sin, tanh, ...) are built here from IEEE-754
  basic operations only (+ - * / sqrt, rounding, scaling by powers of two), which are
  correctly rounded on every platform, one torch kernel per operation (no fused
  multiply-add).

On a GPU (``network_for(model, device)``) the same layers run there: the products and sums
are the same exact integer arithmetic (IEEE float64 on integers below 2^52, exact in any
order), with cuDNN switched off so that no FFT or Winograd algorithm, which rounds in its
transforms, is chosen (determinism.cudnn_off), and every division written tensor by
tensor: CUDA turns division by a Python scalar into multiplication by its reciprocal,
which is not correctly rounded, while the CPU divides (the two spellings give the CPU the
same bits). The elementwise functions are one basic operation per kernel on either device,
so nothing can fuse them into a multiply-add. The network's output goes back to the CPU,
where the rest of the chain runs, and so a file coded on a GPU in this arithmetic is the
same file the CPU writes.

The price is speed: float64 convolutions ran 7-13x slower than oneDNN's float32 ones on an
AVX-512 CPU (torch 2.13). The result differs from the float32 network by the rounding of
activations (about 2^-17 relative at unit scale), which changes the rate negligibly (see
benchmarks/results/coding_arithmetic.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..networks import Attention, Denoiser, ResBlock, unet_body

F64 = torch.float64
ACT_FRAC_BITS = 16   # hidden activations: multiples of 2^-16 ...
ACT_INT_BITS = 8     # ... within +-2^8 where they enter a convolution or linear layer
IN_FRAC_BITS = 24    # the first convolution's inputs (latent, Fourier features): 2^-24 ...
IN_INT_BITS = 4      # ... within +-2^4
MAX_WEIGHT_BITS = 24
EXACT_BITS = 52      # |every partial sum| < 2^52 in units of the product grid

# ---- elementwise functions from basic operations -------------------------------------------
LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: LN2_HI has 32 significant bits,
LN2_LO = 1.90821492927058770002e-10  # so k * LN2_HI is exact for |k| < 2^20
INV_LN2 = 1.44269504088896338700e+00
LN2 = 0.6931471805599453
LN_10000 = 9.210340371976184  # constants written out, not computed by this machine's libm
TWO_PI = 2.0 * math.pi
_EXP_TERMS = [1.0 / math.factorial(n) for n in range(14)]            # Taylor on |r| <= ln2 / 2
_EXPM1_TERMS = [1.0 / math.factorial(n) for n in range(1, 20)]       # on |x| < 1/2
_SIN_TERMS = [(-1.0) ** n / math.factorial(2 * n + 1) for n in range(15)]  # on |theta| <= pi
_LOG_TERMS = [1.0 / (2 * n + 1) for n in range(13)]                  # atanh series, |s| < 0.172


def _horner(x: torch.Tensor, coeffs: list[float]) -> torch.Tensor:
    """sum_n coeffs[n] x^n, one operation per kernel."""
    p = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = p * x
        p = p + c
    return p


def pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k for integer-valued k in [-1022, 1023], built from its bits (exact)."""
    return ((k.to(torch.int64) + 1023) << 52).view(F64)


def exp(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(-708.0, 709.0)
    k = torch.round(x * INV_LN2)
    r = x - k * LN2_HI
    r = r - k * LN2_LO
    return _horner(r, _EXP_TERMS) * pow2(k)


def expm1(x: torch.Tensor) -> torch.Tensor:
    small = x.abs() < 0.5
    series = _horner(torch.where(small, x, torch.zeros_like(x)), _EXPM1_TERMS) * x
    return torch.where(small, series, exp(x) - 1.0)


def log(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive x (normal numbers)."""
    bits = x.view(torch.int64)
    e = (bits >> 52) - 1023                               # x = m 2^e, m in [1, 2)
    m = ((bits & ((1 << 52) - 1)) | (1023 << 52)).view(F64)
    big = m > math.sqrt(2.0)                              # m in [sqrt(1/2), sqrt(2)]
    m = torch.where(big, m * 0.5, m)
    e = (e + big.to(torch.int64)).to(F64)
    s = (m - 1.0) / (m + 1.0)
    log_m = _horner(s * s, _LOG_TERMS) * s * 2.0
    return e * LN2_HI + (log_m + e * LN2_LO)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (exp(-x) + 1.0)


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * sigmoid(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return sigmoid(x * 2.0) * 2.0 - 1.0


def log1p(y: torch.Tensor) -> torch.Tensor:
    """log(1 + y) for y > -1, with the rounding of 1 + y corrected to first order."""
    u = y + 1.0
    return log(u) - ((u - 1.0) - y) / u


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), and x itself above 20 (as torch's softplus)."""
    return torch.where(x > 20.0, x, log1p(exp(torch.minimum(x, torch.full_like(x, 20.0)))))


def sin_2pi(u: torch.Tensor) -> torch.Tensor:
    """sin(2 pi u): reduced to [-1/2, 1/2] exactly, then a Taylor series in theta."""
    theta = (u - torch.round(u)) * TWO_PI
    return _horner(theta * theta, _SIN_TERMS) * theta


def cos_2pi(u: torch.Tensor) -> torch.Tensor:
    return sin_2pi(u + 0.25)


# ---- layers with exact sums ----------------------------------------------------------------
def to_grid(x: torch.Tensor, frac_bits: int, int_bits: int | None = None) -> torch.Tensor:
    """x rounded to multiples of 2^-frac_bits (and clamped to +-2^int_bits), in grid units."""
    u = torch.round(x * float(2**frac_bits))
    if int_bits is not None:
        lim = float(2 ** (frac_bits + int_bits))
        u = u.clamp(-lim, lim)
    return u


class ExactAffine:
    """A convolution or linear layer on grid inputs, with integer weights and exact sums."""

    def to(self, device: torch.device) -> "ExactAffine":
        self.weight = self.weight.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    def __init__(self, layer: torch.nn.Module, in_frac: int, in_int: int):
        w = layer.weight.detach().to("cpu", F64)
        fan_in = math.prod(w.shape[1:])
        budget = EXACT_BITS - (in_frac + in_int) - (fan_in - 1).bit_length()  # ceil(log2(fan_in))
        if budget < 8:
            raise ValueError(f"portable arithmetic: a layer with fan-in {fan_in} leaves {budget} weight bits")
        wbits = min(MAX_WEIGHT_BITS, budget)
        top = float(w.abs().max())
        e = math.frexp(top)[1] if top > 0 else 0           # max |w| < 2^e
        self.w_frac = wbits - e                            # |w| 2^w_frac < 2^wbits
        self.weight = torch.round(w * float(2.0**self.w_frac))
        self.bias = None if layer.bias is None else layer.bias.detach().to("cpu", F64)
        self.in_frac, self.in_int = in_frac, in_int
        self.conv = isinstance(layer, torch.nn.Conv2d)
        if self.conv:
            self.stride, self.padding = layer.stride, layer.padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: float64 real values -> float64 real values on the activation grid."""
        u = to_grid(x, self.in_frac, self.in_int)
        if self.conv:
            y = F.conv2d(u, self.weight, None, self.stride, self.padding)
        else:
            y = F.linear(u, self.weight)
        y = y * float(2.0 ** -(self.in_frac + self.w_frac))  # exact: a power of two
        if self.bias is not None:
            y = y + (self.bias.view(1, -1, 1, 1) if self.conv else self.bias)
        return torch.round(y * float(2**ACT_FRAC_BITS)) * float(2.0**-ACT_FRAC_BITS)


class ExactGroupNorm:
    """GroupNorm of grid values: the group sums and sums of squares in int64 (exact)."""

    def to(self, device: torch.device) -> "ExactGroupNorm":
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        return self

    def __init__(self, norm: torch.nn.GroupNorm):
        self.groups, self.eps = norm.num_groups, float(norm.eps)
        self.weight = norm.weight.detach().to("cpu", F64).view(1, -1, 1, 1)
        self.bias = norm.bias.detach().to("cpu", F64).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        u = to_grid(x, ACT_FRAC_BITS, ACT_INT_BITS).to(torch.int64).view(b, self.groups, -1)  # |u| <= 2^24
        n = u.shape[-1]
        if n >= 1 << 28:  # every int64 sum below, and its float64 copy, stays exact
            raise ValueError(f"portable arithmetic: a GroupNorm group of {n} values is too large")
        s1 = u.sum(-1, keepdim=True).to(F64)
        # sum u^2 with u = hi 2^12 + lo: three exact int64 sums of terms below 2^25, then
        # combined in a fixed order
        hi = u >> 12
        lo = u - (hi << 12)
        s_hh = (hi * hi).sum(-1, keepdim=True).to(F64)
        s_hl = (hi * lo).sum(-1, keepdim=True).to(F64)
        s_ll = (lo * lo).sum(-1, keepdim=True).to(F64)
        s2 = s_hh * float(2**24) + s_hl * float(2**13)
        s2 = s2 + s_ll
        scale = float(2.0**-ACT_FRAC_BITS)
        count = torch.full_like(s1, float(n))  # a tensor divisor: see the module docstring (CUDA)
        mean = s1 / count
        var = s2 / count - mean * mean
        var = var * (scale * scale)
        mean = mean * scale
        inv = 1.0 / torch.sqrt(var + self.eps)
        y = (x.view(b, self.groups, -1) - mean) * inv
        return y.view(b, c, h, w) * self.weight + self.bias


class ExactResBlock:
    def __init__(self, block: ResBlock):
        self.norm1, self.norm2 = ExactGroupNorm(block.norm1), ExactGroupNorm(block.norm2)
        self.conv1, self.conv2 = _affine(block.conv1), _affine(block.conv2)
        self.emb = _affine(block.emb)
        self.skip = None if isinstance(block.skip, torch.nn.Identity) else _affine(block.skip)

    def to(self, device: torch.device) -> "ExactResBlock":
        for part in (self.norm1, self.norm2, self.conv1, self.conv2, self.emb, self.skip):
            if part is not None:
                part.to(device)
        return self

    def __call__(self, x, emb):
        h = self.conv1(silu(self.norm1(x)))
        scale, shift = self.emb(silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (scale + 1.0) + shift
        h = self.conv2(silu(h))
        return (x if self.skip is None else self.skip(x)) + h


def _affine(layer) -> ExactAffine:
    return ExactAffine(layer, ACT_FRAC_BITS, ACT_INT_BITS)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """networks.timestep_embedding (max_period 10000) from basic operations."""
    half = dim // 2
    freqs = exp(torch.arange(half, dtype=F64) * (-LN_10000 / half))
    u = (t.to(F64) * 1000.0)[:, None] * freqs[None] * (1.0 / TWO_PI)
    return torch.cat([cos_2pi(u), sin_2pi(u)], dim=-1)


def fourier_features(z: torch.Tensor, exponents: tuple[int, ...]) -> torch.Tensor:
    """networks.fourier_features: sin / cos(2^n 2 pi z), the scaling by 2^n exact."""
    if not exponents:
        return z[:, :0]
    u = torch.cat([z * float(2.0**n) for n in exponents], dim=1)  # [B, C F, H, W]: channel-major per n
    b, c = z.shape[:2]
    u = u.view(b, len(exponents), c, *z.shape[2:]).transpose(1, 2).reshape(b, c * len(exponents), *z.shape[2:])
    return torch.cat([sin_2pi(u), cos_2pi(u)], dim=1)


class ExactDenoiser:
    """networks.Denoiser's forward in portable arithmetic (float64, on ``device``; the output
    comes back on the CPU)."""

    def __init__(self, net: Denoiser, device: torch.device | str = "cpu"):
        if any(isinstance(m, Attention) for m in net.modules()):
            raise ValueError("portable arithmetic does not run attention layers")
        self.cfg, self.factor = net.cfg, net.factor
        lin1, lin2 = net.emb[0], net.emb[2]
        self.emb1, self.emb2 = _affine(lin1), _affine(lin2)
        self.conv_in = ExactAffine(net.conv_in, IN_FRAC_BITS, IN_INT_BITS)
        self.down = [[ExactResBlock(b) for b in blocks] for blocks in net.down]
        self.downsample = [_affine(c) for c in net.downsample]
        self.mid1, self.mid2 = ExactResBlock(net.mid1), ExactResBlock(net.mid2)
        self.up = [[ExactResBlock(b) for b in blocks] for blocks in net.up]
        self.upsample = [_affine(c) for c in net.upsample]
        self.norm_out = ExactGroupNorm(net.norm_out)
        self.conv_out = _affine(net.conv_out)
        self.device = torch.device(device)
        if self.device.type != "cpu":
            parts = [self.emb1, self.emb2, self.conv_in, *self.downsample, self.mid1, self.mid2, *self.upsample,
                     self.norm_out, self.conv_out, *(b for blocks in self.down + self.up for b in blocks)]
            for part in parts:
                part.to(self.device)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, t_norm: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            from .determinism import cudnn_off

            with cudnn_off():
                return self._forward(z, t_norm)
        return self._forward(z, t_norm)

    def _forward(self, z: torch.Tensor, t_norm: torch.Tensor) -> torch.Tensor:
        z = z.to(self.device, F64)
        h_in, w_in = z.shape[-2:]
        pad_h, pad_w = (-h_in) % self.factor, (-w_in) % self.factor
        if pad_h or pad_w:
            z = F.pad(z, (0, pad_w, 0, pad_h), mode="replicate")
        emb = self.emb2(silu(self.emb1(timestep_embedding(t_norm.to("cpu"), self.cfg.channels).to(self.device))))
        h = self.conv_in(torch.cat([z, fourier_features(z, tuple(self.cfg.fourier_exponents))], dim=1))
        h = unet_body(self, h, emb, lambda h: h, lambda h: h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
        out = self.conv_out(silu(self.norm_out(h)))
        return out[..., :h_in, :w_in].to("cpu")


def det_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in a fixed pairwise order (torch.sum's order depends on the
    SIMD width)."""
    n = x.shape[-1]
    width = 1 << max(0, (n - 1).bit_length())
    if width != n:
        x = F.pad(x, (0, width - n))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def schedule_gamma(sched: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
    """gamma(t) (float64) of a noise schedule, from basic operations: the schedules'
    forward in portable arithmetic."""
    from ..schedules import FixedLinear, LearnedLinear, LearnedMonotone

    t = t.to("cpu", F64)
    p = {k: v.detach().to("cpu", F64) for k, v in sched.state_dict().items()}
    if isinstance(sched, FixedLinear):
        return (p["g1"] - p["g0"]) * t + p["g0"]
    if isinstance(sched, LearnedLinear):
        return p["w"].abs() * t + p["b"]
    if isinstance(sched, LearnedMonotone):
        def tilde(s):
            h = s * p["l1.weight"].abs().view(()) + p["l1.bias"].view(())
            a = sigmoid(h[:, None] * p["l2.weight"].abs().view(1, -1) + p["l2.bias"].view(1, -1))
            return h + det_sum(a * p["l3.weight"].abs().view(1, -1))
        ends = tilde(torch.tensor([0.0, 1.0], dtype=F64))
        frac = (tilde(t.reshape(-1)) - ends[0]) / (ends[1] - ends[0])
        return (softplus(p["log_span"]) * frac + p["gamma_0_param"]).reshape(t.shape)
    raise ValueError(f"portable arithmetic: the {type(sched).__name__} schedule is not supported "
                     "(learned, learned_linear and fixed_linear are)")


def network_for(model, device: torch.device | str = "cpu") -> "ExactDenoiser":
    """The portable network of a VDM on ``device``, or ValueError naming what it cannot run."""
    from ..preconditioning import Preconditioning

    if model.cfg.precond is not Preconditioning.vdm:
        raise ValueError("portable arithmetic runs VDM-preconditioned models only")
    return ExactDenoiser(model.net, device)
