"""Shared fixtures: offline hub, tiny real models of every supported architecture."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import sfsd  # noqa: E402,F401  registers the compressed classes

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(model_type: str):
    """A few-MB config of `model_type` with every decomposable role present."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    if model_type == "gpt2":
        return cls(vocab_size=256, n_embd=64, n_layer=3, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2)
    extra = {"head_dim": 16} if model_type.startswith("gemma") else {}
    if model_type == "gemma3_text":
        extra["sliding_window"] = 16
    return cls(**TINY, **extra)


def tiny_model(model_type: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    # Random init gives near-zero biases and bland statistics; make them informative.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def save_tiny_llama(folder, tokenizer_dir, num_layers: int):
    """A tiny random LLaMA with the real SmolLM2 tokenizer, saved like any Hugging Face model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**TINY, "vocab_size": 49152, "num_hidden_layers": num_layers})).save_pretrained(
        folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def default_model_dir():
    from sfsd.models import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def frontier_store(tmp_path_factory, default_model_dir):
    """A store that a real tiny frontier wrote: uniform and spectrum at 0.8 and 0.6, the base model, an
    evaluated Algorithm 1 search; eval perplexity at 32 and 64 tokens and piqa on 12 documents."""
    from sfsd.paths import data_dir

    root = tmp_path_factory.mktemp("frontier-app") / "cache"
    root.mkdir()
    (root / "data").symlink_to(data_dir())
    model = save_tiny_llama(root.parent / "tiny-llama", default_model_dir, 3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFSD_CACHE_DIR", str(root))
        from sfsd.compress import CalibrationSpec
        from sfsd.search import MetricSpec, SearchConfig, run_search
        from sfsd.search.frontier import evaluate_point, run_frontier

        base = SearchConfig(model=str(model), metric=MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=32),
                            calibration=CalibrationSpec(source="wiki", samples=16,
                                                        seq_len=32), strategy="spectrum", target_budget=0.8)
        run_frontier(base, ["uniform", "spectrum"], [0.8, 0.6], seq_lens=(32, 64), ppl_tokens=2048, tasks=["piqa"],
                     limit=12, progress=False, say=lambda _: None)
        # A plain Algorithm 1 search (a tolerance, no target), evaluated the same way: a point of its own.
        alg1 = run_search(SearchConfig(model=str(model),
                                       metric=MetricSpec(name="ppl", tolerance=0.2, samples=4, seq_len=32),
                                       calibration=CalibrationSpec(source="wiki", samples=16,
                                                                   seq_len=32), first_block=2), progress=False)
        evaluate_point(alg1, (32, 64), 2048, ["piqa"], 12, progress=False)
    return {"root": str(root), "model": str(model)}
