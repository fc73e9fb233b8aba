"""A device's peak dense bf16 TFLOP/s, the denominator of MFU, from its name.

The vendors' datasheet figures without sparsity (as torchtitan's table); a configured value
(``log.peak_tflops``) overrides, and an unknown device or the CPU gives None (MFU is then not logged).
"""

from typing import Optional

import torch

# Checked in order: the first name fragment found in the device's name wins (H100 NVL / PCIe before H100).
PEAK_BF16_TFLOPS = (
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),  # GH200 included: the same tensor cores as H100 SXM
    ("A100", 312.0),
    ("B200", 2250.0),
)


def peak_tflops_of(name: str) -> Optional[float]:
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in name), None)


def peak_tflops(device: torch.device, configured: Optional[float] = None) -> Optional[float]:
    """``configured`` when set, else the figure for ``device``'s name (None on CPU or an unknown card)."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    return peak_tflops_of(torch.cuda.get_device_name(device))
