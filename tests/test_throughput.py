"""Throughput and MFU of an SFT run (ctstore.sft.throughput, issue 18)."""

from __future__ import annotations

import pytest

from ctstore.sft.throughput import peak_flops, throughput


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0),
])
def test_peak_by_cuda_device_name(name, tflops, monkeypatch):
    monkeypatch.delenv("CTSTORE_PEAK_TFLOPS", raising=False)
    peak, note = peak_flops("cuda", name)
    assert peak == tflops * 1e12 and name in note


def test_unknown_device_and_cpu_have_no_peak_and_say_why(monkeypatch):
    monkeypatch.delenv("CTSTORE_PEAK_TFLOPS", raising=False)
    assert peak_flops("cuda", "Tesla T4")[0] is None
    assert "not in the peak table" in peak_flops("cuda", "Tesla T4")[1]
    out = throughput(1000, 2.0, 4e9, "cpu")
    assert out["mfu"] is None and "cpu" in out["mfu_note"]
    assert out["tokens_per_s"] == 500.0 and out["model_flops_per_s"] == 2e9


def test_mfu_is_achieved_over_peak_and_the_environment_overrides(monkeypatch):
    monkeypatch.delenv("CTSTORE_PEAK_TFLOPS", raising=False)
    out = throughput(512 * 2000, 100.0, 6 * 11.42e6 * 512 * 2000, "cuda", "NVIDIA H200")
    assert out["mfu"] == pytest.approx(6 * 11.42e6 * 512 * 2000 / 100.0 / 989e12)
    monkeypatch.setenv("CTSTORE_PEAK_TFLOPS", "0.05")
    out = throughput(100, 1.0, 1e10, "cpu")
    assert out["peak_flops_per_s"] == 5e10 and out["mfu"] == pytest.approx(0.2)
    monkeypatch.setenv("CTSTORE_PEAK_TFLOPS", "fast")
    assert throughput(100, 1.0, 1e10, "cpu")["mfu"] is None
