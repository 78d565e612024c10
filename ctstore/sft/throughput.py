"""Throughput and model FLOPs utilisation (MFU) of an SFT run, for its manifest (issue 18).

* ``tokens_per_s``: training tokens (steps × batch × block) over the training seconds
  (evaluation excluded, as ``train_seconds`` is);
* ``model_flops_per_s``: the model's FLOPs estimate (``PhotonicGPT.flops_per_token``: 6N plus
  the attention term, PaLM appendix B) times those tokens, over the same seconds;
* ``mfu``: that over the device's peak, when the peak is known: ``CTSTORE_PEAK_TFLOPS``
  (TFLOP/s, any device), else :data:`PEAK_TFLOPS` by CUDA device name (dense bf16 tensor-core
  peaks from the vendors' data sheets; SFT runs under bf16 autocast on CUDA). On CPU, or on
  a GPU not in the table, ``mfu`` is ``None`` and ``mfu_note`` says why.
"""

from __future__ import annotations

import os

__all__ = ["PEAK_TFLOPS", "peak_flops", "throughput"]

# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s); the first match wins, so the
# more specific names come first.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


def peak_flops(device: str, device_name: str | None = None) -> tuple[float | None, str]:
    """``(peak FLOP/s or None, where it came from or why it is unknown)``."""
    env = os.environ.get("CTSTORE_PEAK_TFLOPS")
    if env:
        try:
            value = float(env)
        except ValueError:
            return None, f"CTSTORE_PEAK_TFLOPS={env!r} is not a number"
        if value > 0:
            return value * 1e12, "CTSTORE_PEAK_TFLOPS"
    if not device.startswith("cuda"):
        return None, f"no known peak for device {device!r} (set CTSTORE_PEAK_TFLOPS)"
    if device_name is None:
        try:
            import torch

            device_name = torch.cuda.get_device_name()
        except Exception as exc:  # no driver: say so instead of failing the run's manifest
            return None, f"CUDA device name unavailable ({exc})"
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12, f"{device_name}: {tflops:g} TFLOP/s dense bf16 (table)"
    return None, f"{device_name} is not in the peak table (set CTSTORE_PEAK_TFLOPS)"


def throughput(tokens: int, seconds: float, flops: float, device: str, device_name: str | None = None) -> dict:
    """Manifest fields: ``tokens_per_s``, ``model_flops_per_s``, ``peak_flops_per_s``, ``mfu``, ``mfu_note``."""
    ok = seconds > 0
    achieved = flops / seconds if ok else None
    peak, note = peak_flops(device, device_name)
    return {"tokens_per_s": tokens / seconds if ok else None, "model_flops_per_s": achieved,
            "peak_flops_per_s": peak, "mfu": achieved / peak if peak and achieved is not None else None,
            "mfu_note": note}
