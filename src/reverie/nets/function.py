"""``ModelFunction``: how a raw network is called at a process time.

A trained network ``F`` is rarely called as ``F(x_t, t)``: diffusers flow models take
``1000 t``, EDM-style models take ``c_in x`` and ``c_noise = log(sigma) / 4`` and are combined
with the input as ``c_skip x + c_out F`` (Karras et al. 2022, eq. 7 and Table 1), class-
conditional models need a null label when no label is given. This module is the one place that
does it; the trainer (:mod:`reverie.train`), the bundled models and the diffusers adapter all
call networks through it, so a model is trained and sampled through the same code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reverie._tensor import bcast
from reverie.process import GaussianProcess

__all__ = ["ModelFunction", "TIME_INPUTS"]

#: What the network receives as its time input.
#: ``process``: the process time ``t`` itself; ``scaled``: ``time_scale * t`` (diffusers flow
#: models: ``1000 t``); ``c_noise``: EDM's ``log(sigma / alpha) / 4``.
TIME_INPUTS = ("process", "scaled", "c_noise")


class ModelFunction(nn.Module):
    """``fn(x, t, class_labels=None, **cond)``: call ``net`` at process time ``t`` (other
    conditioning keywords, e.g. a coherence score, are passed to ``net`` as they are).

    Without preconditioning the output is the network's raw prediction (eps / v / x0 / flow
    / score, whatever it was trained for). With ``precondition="edm"`` the output is EDM's
    data prediction ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sign * sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)`` (EDM Table 1; ``sign = -1`` is diffusers' EDM
    ``v_prediction``); it needs a process with ``alpha = 1`` (VE / EDM).

    ``null_label``: the label used when ``class_labels`` is omitted (the unconditional model of
    a class-conditional network trained with label dropout). ``out_channels``: keep only the
    first channels of the output (learned-variance models return mean and variance).
    """

    def __init__(
        self,
        net: nn.Module,
        process: GaussianProcess,
        *,
        time_input: str = "process",
        time_scale: float = 1.0,
        precondition: str | None = None,
        sigma_data: float = 0.5,
        output_sign: float = 1.0,
        null_label: int | None = None,
        out_channels: int | None = None,
    ):
        super().__init__()
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; expected one of {TIME_INPUTS}")
        if precondition not in (None, "edm"):
            raise ValueError(f"unknown precondition {precondition!r}; expected None or 'edm'")
        if precondition == "edm":
            a = process.alpha(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
            if not bool(torch.allclose(a, torch.ones_like(a))):
                raise ValueError(
                    f"EDM preconditioning needs a variance-exploding process (alpha = 1), got "
                    f"{process!r}"
                )
        self.net = net
        self.process = process
        self.time_input = time_input
        self.time_scale = float(time_scale)
        self.precondition = precondition
        self.sigma_data = float(sigma_data)
        self.output_sign = float(output_sign)
        self.null_label = null_label
        self.out_channels = out_channels

    def with_net(self, net: nn.Module) -> ModelFunction:
        """The same calling convention around another network (e.g. the EMA weights)."""
        return ModelFunction(
            net,
            self.process,
            time_input=self.time_input,
            time_scale=self.time_scale,
            precondition=self.precondition,
            sigma_data=self.sigma_data,
            output_sign=self.output_sign,
            null_label=self.null_label,
            out_channels=self.out_channels,
        )

    def time_features(self, t: Tensor) -> Tensor:
        """The network's time input for process times ``t [B]`` (float64 in, float32 out)."""
        t64 = t.to(torch.float64)
        if self.time_input == "process":
            out = t64
        elif self.time_input == "scaled":
            out = self.time_scale * t64
        else:  # EDM's c_noise (Table 1)
            out = 0.25 * torch.log(self.process.sigma_ve(t64))
        return out.to(torch.float32)

    def call_net(self, x: Tensor, time: Tensor, class_labels: Tensor | None,
                 **cond: Any) -> Tensor:
        """``net(x, time[, class_labels], **cond)`` with diffusers' output object unwrapped
        (``cond``: extra conditioning keywords the net takes, e.g. ``coherence``)."""
        kwargs: dict[str, Any] = dict(cond)
        if class_labels is not None:
            kwargs["class_labels"] = class_labels
        out = self.net(x, time, **kwargs)
        if not isinstance(out, Tensor):
            out = out.sample if hasattr(out, "sample") else out[0]
        if self.out_channels is not None and out.shape[1] != self.out_channels:
            out = out[:, : self.out_channels]
        return out

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None,
                **cond: Any) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if class_labels is None and self.null_label is not None:
            class_labels = torch.full(
                (x.shape[0],), self.null_label, dtype=torch.long, device=x.device
            )
        if self.precondition is None:
            return self.call_net(x, self.time_features(t), class_labels, **cond)
        # EDM (Karras et al. 2022) eq. 7: D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
        sigma = bcast(self.process.sigma_ve(t.to(torch.float64)), x)
        sd2 = self.sigma_data**2
        c_skip = (sd2 / (sigma**2 + sd2)).to(x.dtype)
        c_out = (self.output_sign * sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)).to(
            x.dtype
        )
        c_in = torch.rsqrt(sigma**2 + sd2).to(x.dtype)
        f = self.call_net(
            c_in * x, 0.25 * torch.log(sigma.flatten()).to(torch.float32), class_labels, **cond
        )
        return c_skip * x + c_out * f.to(x.dtype)
