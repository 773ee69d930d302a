"""Run a model from block b onward on cached hidden states: the prefix below b never changes.

The search walks the layers backward, so while it tries ranks in block b every block below b is intact.
The hidden states entering each block are computed once, by one pass of the original model over the
search batches, and stored on disk (one safetensors file per batch, one tensor per block). A trial then
swaps blocks 0..b-1 for stand-ins — pass-throughs, the last of which returns the stored states — and runs
the model's own forward: embeddings, masks, the blocks from b, the final norm and the head are the
model's code, so any architecture works and the outputs equal a full forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sfsd.adapters import ModelAdapter
from sfsd.atomic import write_text
from sfsd.offload import input_device


class _StandIn(nn.Module):
    """Replaces a block below the one being searched; attribute reads fall through to the block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: its weights stay where they are
        self.replay: torch.Tensor | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states if self.replay is None else self.replay


class PrefixCache:
    """Hidden states entering every block, for a fixed list of input batches, on disk."""

    def __init__(self, folder: str | Path, batches: Sequence[torch.Tensor]):
        self.folder = Path(folder)
        self.batches = list(batches)
        self._block: int | None = None
        self._states: list[torch.Tensor] = []

    @property
    def complete(self) -> bool:
        return (self.folder / "complete").exists()

    def build(self, model: nn.Module, adapter: ModelAdapter) -> None:
        """One pass of the (still intact) model over the batches, saving each block's input."""
        if self.complete:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        captured: dict[str, torch.Tensor] = {}

        def hook_for(index: int):
            def hook(_module, args, kwargs):
                states = args[0] if args else kwargs["hidden_states"]
                captured[f"block{index}"] = states.detach().cpu().contiguous()

            return hook

        handles = [block.register_forward_pre_hook(hook_for(i), with_kwargs=True)
                   for i, block in enumerate(adapter.blocks)]
        device = input_device(model)  # a dispatched model's first weights may be on disk
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.batches):
                    captured.clear()
                    model(input_ids=batch.to(device), use_cache=False)
                    save_file(dict(captured), str(self.folder / f"batch{i:05d}.safetensors"))
        finally:
            for handle in handles:
                handle.remove()
        write_text(self.folder / "complete", f"{len(self.batches)}\n")

    def states_for(self, block: int) -> list[torch.Tensor]:
        """Hidden states entering `block` for every batch (only one block is held in memory)."""
        if block != self._block:
            self._states = []
            for i in range(len(self.batches)):
                with safe_open(str(self.folder / f"batch{i:05d}.safetensors"), framework="pt") as handle:
                    self._states.append(handle.get_tensor(f"block{block}"))
            self._block = block
        return self._states


@contextmanager
def replaying(adapter: ModelAdapter, block: int) -> Iterator[_StandIn | None]:
    """Within the block, the model skips blocks < `block`; set `.replay` on the yielded stand-in per batch."""
    if block == 0:
        yield None
        return
    blocks = adapter.blocks
    originals = [blocks[i] for i in range(block)]
    stand_ins = [_StandIn(original) for original in originals]
    for i, stand_in in enumerate(stand_ins):
        blocks[i] = stand_in
    try:
        yield stand_ins[-1]
    finally:
        for i, original in enumerate(originals):
            blocks[i] = original
