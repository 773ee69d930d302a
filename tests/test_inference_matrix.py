"""Saved models behave like plain transformers models wherever a user takes them (issue 27).

One matrix: every saved format x every family it applies to x every use. The formats are made with the
project's own public API, as a user makes them (`sfsd.compress.compress`, then `save_compressed` with a
tokenizer), and reloaded with plain `AutoModelForCausalLM.from_pretrained(folder)` (after `import sfsd`):

- plain: two-factor `LowRankLinear` layers only (explicit ranks on one layer per input group, so nothing is fused;
  every layer of phi3 and gpt2, whose q/k/v and gate/up are one layer each);
- fused: the uniform protocol, whose thin layers of one input share a stacked first factor (`SharedInputFirst`);
- compact: the uniform protocol with compact factors (`--factors compact`: `CompactLowRankLinear`, the first
  factor's pivot columns fixed to the identity; never fused);
- pruned: LLM-Pruner's structured pruning (`--method llm-pruner`);
- sliced: SliceGPT (`--method slicegpt --slicing 0.25`).

A format that does not apply to a family (fusion without two layers on one input, pruning without separate
q/k/v/o, slicing outside SliceGPT's families) is left out of the parameters, never skipped at run time.

"Equal to the base model's code path": the reloaded model is compared with the in-memory compressed model it was
saved from (logits within 1e-4 relative, float32), greedy generation with its tokens; cached generation with
uncached. Each (format, family) folder is built once per module, on first use.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfsd.adapters import ADAPTER_BY_TYPE, SUPPORTED_MODEL_TYPES, adapter_for
from sfsd.adapters.families import LlamaLikeAdapter
from sfsd.compress import CalibrationSpec, compress, save_compressed
from sfsd.decompose.fusion import LOW_RANK_TYPES
from sfsd.decompose.lowrank import SharedInputFirst
from sfsd.decompose.sliced_layers import SLICEABLE_TYPES

CALIB = CalibrationSpec(source="random", samples=16, seq_len=32)
FAMILIES = list(SUPPORTED_MODEL_TYPES)  # llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, gpt2


def _shares_inputs(family: str) -> bool:
    """Two or more decomposable layers read one input (q/k/v, gate/up): the fused format exists."""
    groups = [spec.input_group for spec in ADAPTER_BY_TYPE[family].roles.values()]
    return len(groups) > len(set(groups))


APPLIES = {
    "plain": lambda family: True,
    "fused": _shares_inputs,
    "compact": lambda family: True,
    "pruned": lambda family: family in LlamaLikeAdapter.model_types,  # separate q/k/v/o and gate/up/down
    "sliced": lambda family: family in SLICEABLE_TYPES,
}
CELLS = [(fmt, family) for fmt, applies in APPLIES.items() for family in FAMILIES if applies(family)]
ONE_PER_FORMAT = [(fmt, "llama") for fmt in APPLIES]  # torch.compile: one family for each format


def cells(which=None):
    chosen = CELLS if which is None else which
    return pytest.mark.parametrize("cell", chosen, ids=[f"{fmt}-{family}" for fmt, family in chosen])


# ---- a tokenizer for the 256-token tiny models ----------------------------------------------------------------

def char_tokenizer():
    """A character-level fast tokenizer whose 256 ids are the tiny models' vocabulary: <pad> 0, <s> 1, </s> 2,
    <unk> 3 (as `conftest.TINY`), then one printable character each; BOS first, as LLaMA's tokenizers do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + [chr(c) for c in range(161, 161 + 256 - len(specials) - 95)]
    vocab = {token: index for index, token in enumerate(specials + chars)}
    assert len(vocab) == 256
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


# ---- the saved formats ----------------------------------------------------------------------------------------

@dataclass
class Saved:
    fmt: str
    family: str
    model: torch.nn.Module  # the in-memory compressed model the folder was saved from (read only)
    folder: Path
    tokenizer: object

    def load(self, **kwargs):
        return AutoModelForCausalLM.from_pretrained(self.folder, **kwargs).eval()


def _plain_ranks(model) -> dict[str, int]:
    """Rank 8 for one layer of each input group (q, o, gate, down; qkv, o, gate_up/up, down) of the last two
    blocks: no group has two thin layers, so nothing is fused."""
    adapter = adapter_for(model)
    first = {}
    for layer in adapter.layers(blocks=list(range(adapter.num_blocks - 2, adapter.num_blocks))):
        first.setdefault(layer.input_group, layer.name)
    return {name: 8 for name in first.values()}


def build(fmt: str, family: str, folder: Path) -> Saved:
    """The (format, family) model made with sfsd's public API, saved with its tokenizer."""
    tokenizer = char_tokenizer()
    model = tiny_model(family)
    if fmt == "plain":
        compress(model, tokenizer, "feature", ranks=_plain_ranks(model), calibration=CALIB, progress=False)
    elif fmt == "fused":
        compress(model, tokenizer, "feature", beta=0.5, last_blocks=2, calibration=CALIB, progress=False)
    elif fmt == "compact":
        compress(model, tokenizer, "feature", beta=0.5, last_blocks=2, calibration=CALIB, progress=False,
                 factors="compact")
    elif fmt == "pruned":  # 0.6: Qwen3's 128-wide heads miss 0.5 by more than the planner's 0.5%
        compress(model, tokenizer, "llm-pruner", beta=0.6, last_blocks=2, calibration=CALIB, progress=False)
    else:
        compress(model, tokenizer, "slicegpt", slicing=0.25, calibration=CALIB, progress=False)
    model.eval()
    fused = sum(isinstance(m, SharedInputFirst) for m in model.modules())
    thin = sum(isinstance(m, LOW_RANK_TYPES) for m in model.modules())
    expected = {"plain": (False, True, None, None), "fused": (True, True, None, None),
                "compact": (False, True, "sfsd_factors", None),
                "pruned": (False, False, "sfsd_pruned", None), "sliced": (False, False, None, "sfsd_sliced")}[fmt]
    assert (fused > 0, thin > 0) == expected[:2], (fmt, family, fused, thin)
    for record in expected[2:]:
        if record:
            assert getattr(model.config, record), (fmt, family, record)
    save_compressed(model, tokenizer, folder)
    return Saved(fmt, family, model, folder, tokenizer)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny models gain nothing from two, and on a 2-core machine shared with other work
    two threads waiting on each other made a generate of 8 tokens take seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`saved[(fmt, family)]`: built on first use, once per module."""
    root = tmp_path_factory.mktemp("formats")
    built: dict[tuple[str, str], Saved] = {}

    class Lazy:
        def __getitem__(self, cell):
            if cell not in built:
                built[cell] = build(*cell, root / "-".join(cell))
            return built[cell]

    return Lazy()


# ---- helpers --------------------------------------------------------------------------------------------------

def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape
    return float((got.double() - expected.double()).norm() / expected.double().norm())


def _batch(seed: int = 1, length: int = 12):
    """Two rows, the second left-padded by 3 (token 0, masked out)."""
    ids = torch.randint(4, 256, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


def _logits(model, ids, mask, context=torch.no_grad):
    with context():
        return model(input_ids=ids, attention_mask=mask).logits


def _generate(model, ids, mask, **kwargs):
    """`model.generate`, greedy by default; always `max_new_tokens` new tokens (no early EOS)."""
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, **kwargs}
    kwargs.setdefault("min_new_tokens", kwargs["max_new_tokens"])
    return model.generate(input_ids=ids, attention_mask=mask, **kwargs)


def _preserved(model, fmt: str) -> dict[str, torch.nn.Parameter]:
    """The parameters a fine-tuning of the compressed model would train: the thin factors (the stacked first
    factors of a fused group included), the pruned blocks' narrower layers, the sliced model's narrower
    layers and shortcut matrices."""
    if fmt in ("plain", "fused", "compact"):
        owners = [name for name, m in model.named_modules() if isinstance(m, (*LOW_RANK_TYPES, SharedInputFirst))]
    elif fmt == "pruned":
        blocks = adapter_for(model).blocks_path
        owners = [f"{blocks}.{b}" for b in model.config.sfsd_pruned["blocks"]]
    else:
        owners = [adapter_for(model).blocks_path]
    chosen = {name: p for name, p in model.named_parameters() if any(name.startswith(o + ".") for o in owners)}
    if fmt in ("pruned", "sliced"):
        chosen = {name: p for name, p in chosen.items() if "norm" not in name}
    assert chosen
    return chosen


# ---- the cheap uses: every format on every family -------------------------------------------------------------

@cells()
def test_forward_under_no_grad(saved, cell):
    s = saved[cell]
    ids, mask = _batch()
    reloaded = s.load()
    assert type(reloaded) is type(s.model)
    assert _relative(_logits(reloaded, ids, mask), _logits(s.model, ids, mask)) < 1e-4


@cells()
def test_forward_and_generate_under_inference_mode(saved, cell):
    """Inference tensors have no version counter (the fused groups' cache key read it: RuntimeError before)."""
    s = saved[cell]
    ids, mask = _batch()
    reloaded = s.load()
    expected = _logits(s.model, ids, mask)
    got = _logits(reloaded, ids, mask, torch.inference_mode)
    assert got.is_inference()
    assert _relative(got, expected) < 1e-4
    other, other_mask = _batch(seed=2)  # a second input in the same mode: nothing stale is reused
    assert _relative(_logits(reloaded, other, other_mask, torch.inference_mode),
                     _logits(s.model, other, other_mask)) < 1e-4
    with torch.inference_mode():
        tokens = _generate(reloaded, ids, mask)
    assert torch.equal(tokens, _generate(s.model, ids, mask))


@cells()
def test_greedy_generate_with_and_without_kv_cache(saved, cell):
    s = saved[cell]
    ids, mask = _batch()
    reloaded = s.load()
    cached = _generate(reloaded, ids, mask)
    assert cached.shape == (2, 12 + 8)
    assert torch.equal(cached, _generate(s.model, ids, mask))  # the in-memory model's tokens
    assert torch.equal(_generate(reloaded, ids, mask, use_cache=False), cached)
    assert torch.equal(_generate(reloaded, ids, mask, cache_implementation="static"), cached)


@cells()
def test_sampling_with_a_seed_repeats(saved, cell):
    s = saved[cell]
    ids, mask = _batch()
    reloaded = s.load()

    def sample(model, seed):
        torch.manual_seed(seed)
        return _generate(model, ids, mask, do_sample=True, top_k=0, temperature=1.0)

    first = sample(reloaded, 7)
    assert torch.equal(sample(reloaded, 7), first)
    assert torch.equal(sample(s.model, 7), first)


@cells()
def test_save_pretrained_of_a_reloaded_model(saved, cell, tmp_path):
    s = saved[cell]
    ids, mask = _batch()
    reloaded = s.load()
    reloaded.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    assert type(again) is type(s.model)
    for record in ("sfsd_method", "sfsd_layers", "sfsd_fused", "sfsd_factors", "sfsd_pruned", "sfsd_sliced"):
        assert getattr(again.config, record, None) == getattr(s.model.config, record, None), record
    assert again.state_dict().keys() == s.model.state_dict().keys()
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in s.model.parameters())
    assert _relative(_logits(again, ids, mask), _logits(s.model, ids, mask)) < 1e-4


@cells()
def test_gradients_reach_the_preserved_factors(saved, cell):
    """Fine-tuning the kept factors (the paper's next step): the reloaded model's gradients equal the in-memory
    model's, are finite and non-zero on every preserved factor, and one step on them alone lowers the loss."""
    s = saved[cell]
    ids, mask = _batch()
    labels = ids.masked_fill(mask == 0, -100)
    reloaded = s.load().train()
    reference = copy.deepcopy(s.model).train()
    for model in (reloaded, reference):
        model.requires_grad_(False)
        for p in _preserved(model, s.fmt).values():
            p.requires_grad_(True)
        torch.manual_seed(0)  # the same dropout masks (GPT-2's config has dropout 0.1)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in _preserved(reloaded, s.fmt).items()}
    for name, p in _preserved(reference, s.fmt).items():
        assert grads[name] is not None and torch.isfinite(grads[name]).all(), name
        assert grads[name].abs().sum() > 0, name
        assert _relative(grads[name], p.grad) < 1e-4, name
    assert all(p.grad is None for p in reloaded.parameters() if not p.requires_grad)

    def loss():
        with torch.no_grad():
            return float(reloaded(input_ids=ids, attention_mask=mask, labels=labels).loss)

    before = loss()
    optimizer = torch.optim.SGD([p for p in reloaded.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    assert loss() < before


@cells()
def test_gradient_checkpointing_gives_the_same_gradients(saved, cell):
    s = saved[cell]
    ids, mask = _batch()
    grads = []
    for checkpointing in (False, True):
        model = s.load().train()
        if checkpointing:
            model.activation_checkpointing_enable()  # gradient_checkpointing_enable's new name
        torch.manual_seed(0)  # the same dropout masks (checkpointing replays the RNG state when it recomputes)
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in _preserved(model, s.fmt).items()})
    for name, grad in grads[0].items():
        assert _relative(grads[1][name], grad) < 1e-5, name


@cells()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_loading(saved, cell, dtype):
    """`from_pretrained(folder, dtype=...)`: every weight (thin factors, shortcuts) in that dtype, logits close
    to float32's (a loose bound: 8- and 11-bit mantissas), and it generates."""
    s = saved[cell]
    ids, mask = _batch()
    half = s.load(dtype=dtype)
    assert {p.dtype for p in half.parameters()} == {dtype}
    got = _logits(half, ids, mask)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert _relative(got, _logits(s.model, ids, mask)) < 0.05
    assert _generate(half, ids, mask, max_new_tokens=4).shape == (2, 16)
    # the same weights as a float32 load cast after loading (not the same logits: `.to` also casts the rotary
    # inv_freq buffers, which a load in `dtype` keeps in float32, as it does for the base model)
    cast = dict(s.load().to(dtype).named_parameters())
    assert all(torch.equal(p, cast[name]) for name, p in half.named_parameters())


@cells()
def test_device_map_auto(saved, cell):
    """`device_map="auto"` (accelerate installed; CPU only here, so everything lands on the CPU without accelerate's
    hooks: the disk-offload test below has them)."""
    s = saved[cell]
    ids, mask = _batch()
    mapped = s.load(device_map="auto")
    # one device: transformers places the weights there and dispatches nothing (no hooks, no hf_device_map)
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}
    assert _relative(_logits(mapped, ids, mask), _logits(s.model, ids, mask)) < 1e-4
    assert torch.equal(_generate(mapped, ids, mask), _generate(s.model, ids, mask))


@cells()
def test_text_generation_pipeline(saved, cell):
    """`pipeline("text-generation", model=folder)` (model and tokenizer from the folder) and with the objects."""
    from transformers import pipeline

    s = saved[cell]
    prompts = ["Hello world", "A longer prompt, padded."]
    kwargs = {"max_new_tokens": 6, "do_sample": False}
    expected = pipeline("text-generation", model=s.model, tokenizer=s.tokenizer)(prompts, **kwargs)
    by_path = pipeline("text-generation", model=str(s.folder))
    assert type(by_path.model) is type(s.model)
    assert by_path(prompts, **kwargs) == expected
    by_objects = pipeline("text-generation", model=s.load(), tokenizer=AutoTokenizer.from_pretrained(s.folder))
    assert by_objects(prompts, batch_size=2, **kwargs) == expected


def _disk_map(model) -> dict[str, str]:
    """Every block after the first on disk, the rest of the model on the CPU (module names of any family)."""
    blocks = adapter_for(model).blocks_path
    backbone, _, blocks_name = blocks.rpartition(".")
    device_map = {name: "cpu" for name, _ in model.named_children() if name != backbone}
    device_map |= {f"{backbone}.{name}": "cpu" for name, _ in model.get_submodule(backbone).named_children()
                   if name != blocks_name}
    device_map |= {f"{blocks}.{b}": "disk" if b else "cpu" for b in range(adapter_for(model).num_blocks)}
    return device_map


@cells()
def test_device_map_with_blocks_offloaded_to_disk(saved, cell, tmp_path):
    """accelerate's hooks bring each offloaded block's weights in for its forward pass (thin factors, shared
    first factors, shortcut matrices alike)."""
    s = saved[cell]
    ids, mask = _batch()
    offloaded = s.load(device_map=_disk_map(s.model), offload_folder=str(tmp_path / "offload"))
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}
    last = adapter_for(offloaded).blocks[-1]
    assert all(p.device.type == "meta" for p in last.parameters())
    assert _relative(_logits(offloaded, ids, mask), _logits(s.model, ids, mask)) < 1e-4
    assert torch.equal(_generate(offloaded, ids, mask), _generate(s.model, ids, mask))


# ---- the costly use: one family per format --------------------------------------------------------------------

@pytest.mark.slow
@cells(ONE_PER_FORMAT)
def test_torch_compile(saved, cell):
    """`torch.compile` (inductor, CPU; the base LLaMA compiles): two different inputs, each equal to eager.
    Tens of seconds a case (8-22 s with a warm inductor cache, about 50 s cold), hence one family and slow."""
    s = saved[cell]
    compiled = torch.compile(s.load())
    for seed in (1, 2):
        ids, mask = _batch(seed)
        assert _relative(_logits(compiled, ids, mask), _logits(s.model, ids, mask)) < 1e-4
