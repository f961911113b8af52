"""Where and in which number format the model runs: device, autocast dtype, memory format."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
from torch import nn

from unet.errors import UserError


@dataclasses.dataclass(frozen=True)
class Precision:
    """How the model runs: device, autocast dtype (None = fp32), memory format, loss scaling."""
    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool
    grad_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast]

    def context(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Moves an input batch (B, C, H, W) to the device in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def choose_precision(requested: str = "auto", device: str | None = None,
                     memory_format: str = "auto") -> Precision:
    """CUDA: bf16 autocast where supported, else fp16 with a GradScaler. CPU: bf16 autocast when
    the processor has bf16 instructions (several times faster than fp32 there), else fp32.
    `memory_format` channels_last (NHWC) or contiguous (NCHW); auto: channels_last on CUDA and
    with bf16 (what oneDNN and cuDNN run fastest there), NCHW in fp32 on a CPU (on an AVX2
    CPU a training step of the seed-size model ran 0.73x as fast in channels_last). The
    training plan measures both on the machine instead
    (unet.planning.fingerprint.measure_speed)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if requested == "auto":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif requested == "auto":
        requested = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    elif requested == "fp16":
        raise UserError("parameter precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    if memory_format == "auto":
        memory_format = "channels_last" if dev.type == "cuda" or dtype else "contiguous"
    return Precision(dev, dtype, channels_last=memory_format == "channels_last",
                     grad_scaler=dtype is torch.float16)


def prepare(model: nn.Module, precision: Precision) -> nn.Module:
    if precision.device.type == "cuda":
        # Fixed input sizes: let cuDNN time its convolution algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    model = model.to(precision.device)
    return model.to(memory_format=torch.channels_last) if precision.channels_last else model
