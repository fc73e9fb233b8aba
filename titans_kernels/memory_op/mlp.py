"""The memory MLP and the closed-form gradient of its associative loss.

Layer l maps ``h_{l-1} W_l``; GELU (exact, erf) sits between layers, none after the last, no biases.
Loss of one token: ``|| M_W(k) - v ||^2`` (summed, no 1/2), so the output error is ``2 (y - v)``.
Every tensor here carries leading batch dims (for example ``[B, H, n, d]`` rows against
``[B, H, d_in, d_out]`` weights).
"""

import math

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d gelu(x) / dx = Phi(x) + x phi(x) for the exact (erf) GELU."""
    return 0.5 * (1.0 + torch.erf(x * _INV_SQRT2)) + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def mlp_forward(weights, x: torch.Tensor) -> torch.Tensor:
    """M_W(x) for rows ``x``."""
    h = x
    for i, w in enumerate(weights):
        h = h @ w
        if i < len(weights) - 1:
            h = gelu(h)
    return h


def loss_gradient_factors(weights, k: torch.Tensor, v: torch.Tensor):
    """Per-layer (inputs X_l, errors Delta_l) of the loss at ``weights``.

    The gradient of token t's loss w.r.t. layer l is the outer product ``X_l[t]^T Delta_l[t]``; the
    factors are returned instead of the ``[d_in, d_out]`` products so that callers never materialise
    one weight-sized tensor per token.
    """
    inputs, pre_acts = [k], []
    h = k
    for i, w in enumerate(weights):
        z = h @ w
        if i < len(weights) - 1:
            pre_acts.append(z)
            h = gelu(z)
            inputs.append(h)
        else:
            h = z
    delta = 2.0 * (h - v)
    errors = [delta]
    for i in range(len(weights) - 2, -1, -1):
        delta = (delta @ weights[i + 1].transpose(-1, -2)) * gelu_grad(pre_acts[i])
        errors.append(delta)
    errors.reverse()
    return inputs, errors


def gelu_grad2(x: torch.Tensor) -> torch.Tensor:
    """d^2 gelu(x) / dx^2 = phi(x) (2 - x^2)."""
    x2 = x * x
    return torch.exp(x2 * -0.5).mul_((2.0 - x2).mul_(_INV_SQRT_2PI))


def gelu_vjp(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * gelu'(x) in one fused kernel (several times faster than composing gelu_grad)."""
    return torch.ops.aten.gelu_backward(grad, x)
