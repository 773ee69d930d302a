"""Input statistics of linear layers on calibration data, collected with forward hooks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from sfsd.adapters import LinearLayer, ModelAdapter


@dataclass
class InputStatistics:
    """Token count, sum x, sum |x| and sum x x^T (float64) of one layer's inputs, padding excluded."""

    count: int
    sum_x: torch.Tensor
    sum_abs_x: torch.Tensor
    sum_xxT: torch.Tensor
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls, dim: int, device: torch.device) -> InputStatistics:
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, zeros.clone(), zeros.clone(), torch.zeros(dim, dim, dtype=torch.float64, device=device))

    def add(self, x: torch.Tensor) -> None:
        # One batch's x^T x is a float32 GEMM (at least float32; float64 inputs stay float64) and only
        # the running total is float64: a float64 GEMM costs several times the layer's own float32
        # work on CPU, while a batch (a few thousand tokens) loses nothing visible in float32.
        x = x.reshape(-1, x.shape[-1])
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        self.count += x.shape[0]
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.sum_abs_x += x.abs().sum(0, dtype=torch.float64)
        self.sum_xxT += x.T @ x

    def to(self, device: torch.device | str) -> InputStatistics:
        if self.sum_xxT.device == torch.device(device):
            return self
        return InputStatistics(self.count, self.sum_x.to(device), self.sum_abs_x.to(device), self.sum_xxT.to(device))

    def derived(self, key: str, compute) -> torch.Tensor:
        """A matrix derived from these statistics, computed once per shared-input group."""
        if key not in self._derived:
            self._derived[key] = compute(self)
        return self._derived[key]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum_x / self.count

    @property
    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (uncentred)."""
        return self.sum_xxT / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """Cov(x) = E[x x^T] - E[x] E[x]^T (centred)."""
        mean = self.mean
        return self.second_moment - torch.outer(mean, mean)


@dataclass
class CalibrationBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def collect_statistics(
    model: nn.Module,
    adapter: ModelAdapter,
    layers: Iterable[LinearLayer],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, InputStatistics]:
    """Run the calibration tokens through the model and gather statistics per shared-input group.

    Layers that read the same input (q/k/v; gate/up) share one group, so its covariance is collected
    once. Statistics accumulate on the model's device; only the backbone runs (no lm_head).
    """
    device = next(model.parameters()).device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    first_of_group: dict[str, LinearLayer] = {}
    for layer in layers:
        first_of_group.setdefault(layer.input_group, layer)
    stats = {g: InputStatistics.empty(layer.d_in, device) for g, layer in first_of_group.items()}
    current_mask: list[torch.Tensor] = []

    def hook_for(group: str):
        def hook(_module, args):
            x = args[0]
            stats[group].add(x[current_mask[0]])

        return hook

    handles = [
        model.get_submodule(layer.name).register_forward_pre_hook(hook_for(group))
        for group, layer in first_of_group.items()
    ]
    backbone = getattr(model, "base_model", model)
    try:
        batches = range(0, input_ids.shape[0], batch_size)
        with torch.no_grad():
            for start in tqdm(batches, desc="calibration", unit="batch", disable=not progress):
                ids = input_ids[start : start + batch_size].to(device)
                mask = attention_mask[start : start + batch_size].to(device)
                current_mask[:] = [mask.bool()]
                backbone(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return stats
