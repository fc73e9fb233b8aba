"""MFU's denominator: the card's bf16 dense peak from its name, a configured value first, none on CPU."""

import pytest
import torch

from titans_pretrain.device_peak import peak_tflops, peak_tflops_of


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA GH200 480GB", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA B200", 2250.0), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_from_the_device_name(name, peak):
    assert peak_tflops_of(name) == peak


def test_configured_peak_wins_and_cpu_has_none(monkeypatch):
    cpu = torch.device("cpu")
    assert peak_tflops(cpu) is None and peak_tflops(cpu, 123.0) == 123.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_tflops(torch.device("cuda", 0)) == 756.0 and peak_tflops(torch.device("cuda", 0), 500.0) == 500.0
