"""Statistics of linear layers on calibration data, collected with forward hooks.

Two sides. The input side (one per shared-input group: q/k/v read one input, gate/up another) keeps
sum x, sum |x| and sum x x^T: everything any method needs. The output side (one per layer) keeps sum y
and sum y y^T of y = W x (the layer's bias taken off): all the feature-space methods need, since
W Cov(x) W^T = Cov(y), W E[x x^T] W^T = E[y y^T] and W E[x] = E[y]. `choose_sides` picks, per group,
the side whose Gram costs fewer multiply-adds per token: d_in^2 on the input side, the sum of d_out^2
over the group's layers on the output side (down_proj of the default model: 576^2 instead of 1536^2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from sfsd.adapters import LinearLayer, ModelAdapter

INPUT, OUTPUT = "input", "output"


def _gram_dtype(x: torch.Tensor) -> torch.dtype:
    # One batch's Gram is a float32 GEMM (at least float32; float64 inputs stay float64) and only the
    # running total is float64: a float64 GEMM costs several times the layer's own float32 work on CPU,
    # while a batch (a few thousand tokens) loses nothing visible in float32.
    return torch.promote_types(x.dtype, torch.float32)


# Column-block width of the symmetric Gram (see `add_gram`): 192-wide blocks run as fast per multiply-add
# as the full product on this CPU's BLAS, so fewer multiply-adds is less time (576 wide: 0.70x the time).
GRAM_BLOCK = 192


def add_gram(total: torch.Tensor, x: torch.Tensor) -> None:
    """total += x^T x, computing only the column blocks on and above the diagonal.

    x^T x is symmetric: with the columns cut into p blocks, the p (p + 1) / 2 products x_i^T x_j (j >= i)
    hold all of it, (p + 1) / 2p of the full product's multiply-adds (2/3 for p = 3); each lower block is
    the transpose of its upper one. Every entry is the same dot product over the same tokens as in the
    full product. On an accelerator one product is faster than many small ones.
    """
    d = x.shape[1]
    parts = max(1, min(8, d // GRAM_BLOCK)) if x.device.type == "cpu" else 1
    if parts == 1:
        total += x.T @ x
        return
    edges = [d * i // parts for i in range(parts + 1)]
    cols = [x[:, edges[i] : edges[i + 1]] for i in range(parts)]
    for i in range(parts):
        rows = slice(edges[i], edges[i + 1])
        total[rows, rows] += cols[i].T @ cols[i]
        for j in range(i + 1, parts):
            block = cols[i].T @ cols[j]
            other = slice(edges[j], edges[j + 1])
            total[rows, other] += block
            total[other, rows] += block.T


@dataclass
class InputStatistics:
    """Token count, sum x, sum |x| and sum x x^T (float64) of one layer's inputs, padding excluded."""

    count: int
    sum_x: torch.Tensor
    sum_abs_x: torch.Tensor
    sum_xxT: torch.Tensor
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    side = INPUT

    @classmethod
    def empty(cls, dim: int, device: torch.device) -> InputStatistics:
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, zeros.clone(), zeros.clone(), torch.zeros(dim, dim, dtype=torch.float64, device=device))

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        x = x.to(_gram_dtype(x))
        self.count += x.shape[0]
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.sum_abs_x += x.abs().sum(0, dtype=torch.float64)
        add_gram(self.sum_xxT, x)

    def to(self, device: torch.device | str) -> InputStatistics:
        if self.sum_xxT.device == torch.device(device):
            return self
        return InputStatistics(self.count, self.sum_x.to(device), self.sum_abs_x.to(device), self.sum_xxT.to(device))

    @property
    def device(self) -> torch.device:
        return self.sum_xxT.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"sum_x": self.sum_x, "sum_abs_x": self.sum_abs_x, "sum_xxT": self.sum_xxT}

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

    def output_mean(self, weight: torch.Tensor) -> torch.Tensor:
        """E[W x] = W x_bar."""
        return weight @ self.mean

    def output_moment(self, weight: torch.Tensor, centred: bool) -> torch.Tensor:
        """W Cov(x) W^T (centred) or W E[x x^T] W^T."""
        return weight @ (self.covariance if centred else self.second_moment) @ weight.T


@dataclass
class OutputStatistics:
    """Token count, sum y and sum y y^T (float64) of one layer's y = W x (its bias taken off), padding excluded."""

    count: int
    sum_y: torch.Tensor
    sum_yyT: torch.Tensor

    side = OUTPUT

    @classmethod
    def empty(cls, dim: int, device: torch.device) -> OutputStatistics:
        return cls(0, torch.zeros(dim, dtype=torch.float64, device=device),
                   torch.zeros(dim, dim, dtype=torch.float64, device=device))

    def add(self, y: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        y = y.reshape(-1, y.shape[-1])
        y = y.to(_gram_dtype(y))
        if bias is not None:
            y = y - bias.to(y.dtype)
        self.count += y.shape[0]
        self.sum_y += y.sum(0, dtype=torch.float64)
        add_gram(self.sum_yyT, y)

    def to(self, device: torch.device | str) -> OutputStatistics:
        if self.sum_yyT.device == torch.device(device):
            return self
        return OutputStatistics(self.count, self.sum_y.to(device), self.sum_yyT.to(device))

    @property
    def device(self) -> torch.device:
        return self.sum_yyT.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"sum_y": self.sum_y, "sum_yyT": self.sum_yyT}

    def output_mean(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """E[W x], measured."""
        return self.sum_y / self.count

    def output_moment(self, weight: torch.Tensor | None = None, centred: bool = True) -> torch.Tensor:
        """Cov(W x) (centred) or E[(W x)(W x)^T], measured."""
        moment = self.sum_yyT / self.count
        if not centred:
            return moment
        mean = self.output_mean()
        return moment - torch.outer(mean, mean)


Statistics = InputStatistics | OutputStatistics


def statistics_from_tensors(side: str, count: int, tensors: Mapping[str, torch.Tensor]) -> Statistics:
    """Rebuild statistics from `tensors()` (what the statistics cache stores)."""
    if side == INPUT:
        return InputStatistics(count, tensors["sum_x"], tensors["sum_abs_x"], tensors["sum_xxT"])
    return OutputStatistics(count, tensors["sum_y"], tensors["sum_yyT"])


def choose_sides(layers: Iterable[LinearLayer], output_side_ok: bool) -> dict[str, str]:
    """Per shared-input group, the side its statistics are kept on.

    The output side only when the caller's method can use it (the feature-space methods) and its Grams
    cost strictly fewer multiply-adds per token than the input Gram: sum of d_out^2 over the group's
    chosen layers < d_in^2. A tie keeps the input side, which serves every method.
    """
    groups: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.input_group, []).append(layer)
    return {group: OUTPUT if output_side_ok and sum(m.d_out ** 2 for m in members) < members[0].d_in ** 2
            else INPUT for group, members in groups.items()}


def statistics_key(layer: LinearLayer, sides: Mapping[str, str]) -> str:
    """Where a layer's statistics are found: its group's name (input side) or its own name (output side)."""
    return layer.name if sides.get(layer.input_group, INPUT) == OUTPUT else layer.input_group


def statistics_entries(layers: Iterable[LinearLayer], sides: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Every statistics entry the layers need: key -> (side, dimension), in forward order."""
    entries: dict[str, tuple[str, int]] = {}
    for layer in layers:
        side = sides.get(layer.input_group, INPUT)
        entries.setdefault(statistics_key(layer, sides), (side, layer.d_out if side == OUTPUT else layer.d_in))
    return entries


class StatisticsHooks:
    """Forward hooks that gather the statistics of `layers` on `device`, padding excluded.

    One implementation for both passes (the full-model `collect_statistics` and the block-streaming
    `run_block`). An input-side group hooks its first layer's input (forward pre-hook); an output-side
    layer hooks its own output (forward hook) and takes its bias off. Set `tokens` (bool, batch x seq:
    True where not padding) before each batch.
    """

    def __init__(self, model: nn.Module, layers: Iterable[LinearLayer], device: torch.device,
                 sides: Mapping[str, str] | None = None):
        self.layers = list(layers)
        self.sides = dict(sides or {})
        self.stats: dict[str, Statistics] = {}
        self._select: torch.Tensor | None = None
        self._handles = []
        self._model, self._device = model, device

    @property
    def tokens(self) -> torch.Tensor | None:
        return self._select

    @tokens.setter
    def tokens(self, mask: torch.Tensor) -> None:
        # Without padding every token counts: no boolean-index copy of each hooked tensor.
        self._select = None if bool(mask.all()) else mask

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._select is None else t[self._select]

    def __enter__(self) -> StatisticsHooks:
        for key, (side, dim) in statistics_entries(self.layers, self.sides).items():
            cls = OutputStatistics if side == OUTPUT else InputStatistics
            self.stats[key] = cls.empty(dim, self._device)
        hooked_groups: set[str] = set()
        try:
            for layer in self.layers:
                key = statistics_key(layer, self.sides)
                module = self._model.get_submodule(layer.name)
                if isinstance(self.stats[key], OutputStatistics):
                    self._handles.append(module.register_forward_hook(self._output_hook(key, _bias(module))))
                elif key not in hooked_groups:  # the group's first layer: its input is the group's
                    hooked_groups.add(key)
                    self._handles.append(module.register_forward_pre_hook(self._input_hook(key)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _input_hook(self, key: str):
        def hook(_module, args):
            self.stats[key].add(self._rows(args[0]))

        return hook

    def _output_hook(self, key: str, bias: torch.Tensor | None):
        bias = None if bias is None else bias.to(self._device)

        def hook(_module, _args, output):
            self.stats[key].add(self._rows(output), bias)

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _bias(module: nn.Module) -> torch.Tensor | None:
    """The layer's bias (read once, onloaded if the module is offloaded): y = W x + b, and we want W x."""
    from sfsd.offload import onloaded

    with onloaded(module):
        bias = getattr(module, "bias", None)
        return None if bias is None else bias.detach().clone()


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
    sides: Mapping[str, str] | None = None,
) -> dict[str, Statistics]:
    """Run the calibration tokens through the model and gather statistics per shared-input group.

    Layers that read the same input (q/k/v; gate/up) share one group, so its covariance is collected
    once; a group `sides` puts on the output side gets one entry per layer instead (see
    `statistics_key`). Statistics accumulate on the model's device; only the backbone runs (no lm_head).
    """
    device = next(model.parameters()).device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    backbone = getattr(model, "base_model", model)
    with StatisticsHooks(model, layers, device, sides) as hooks, torch.no_grad():
        batches = range(0, input_ids.shape[0], batch_size)
        for start in tqdm(batches, desc="calibration", unit="batch", disable=not progress):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            hooks.tokens = mask.bool()
            backbone(input_ids=ids, attention_mask=mask, use_cache=False)
    return hooks.stats
