"""Rotary position embedding (RoPE, rotate-half form), computed for any positions on any device."""

import torch


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float, dtype=torch.float32):
    """cos, sin of shape [len(positions), head_dim] for integer ``positions``."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, head_dim] with cos/sin [T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
