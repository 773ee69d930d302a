"""Adapters for the supported architecture families."""

from __future__ import annotations

from sfsd.adapters.base import ModelAdapter, RoleSpec

_ATTN_IN, _ATTN_OUT, _MLP_IN, _MLP_OUT = "attn_in", "attn_out", "mlp_in", "mlp_out"


class LlamaLikeAdapter(ModelAdapter):
    """LLaMA, Mistral, Qwen2/3 and Gemma 1/2/3: separate q/k/v and gate/up projections."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    roles = {
        "q": RoleSpec("self_attn.q_proj", _ATTN_IN),
        "k": RoleSpec("self_attn.k_proj", _ATTN_IN),
        "v": RoleSpec("self_attn.v_proj", _ATTN_IN),
        "o": RoleSpec("self_attn.o_proj", _ATTN_OUT),
        "gate": RoleSpec("mlp.gate_proj", _MLP_IN),
        "up": RoleSpec("mlp.up_proj", _MLP_IN),
        "down": RoleSpec("mlp.down_proj", _MLP_OUT),
    }


class Phi3Adapter(ModelAdapter):
    """Phi-3: fused qkv_proj and gate_up_proj, each treated as one role."""

    model_types = ("phi3",)
    roles = {
        "qkv": RoleSpec("self_attn.qkv_proj", _ATTN_IN),
        "o": RoleSpec("self_attn.o_proj", _ATTN_OUT),
        "gate_up": RoleSpec("mlp.gate_up_proj", _MLP_IN),
        "down": RoleSpec("mlp.down_proj", _MLP_OUT),
    }


class GPT2Adapter(ModelAdapter):
    """GPT-2: Conv1D layers (weights stored transposed), fused c_attn."""

    model_types = ("gpt2",)
    blocks_path = "transformer.h"
    transposed = True
    roles = {
        "qkv": RoleSpec("attn.c_attn", _ATTN_IN),
        "o": RoleSpec("attn.c_proj", _ATTN_OUT),
        "up": RoleSpec("mlp.c_fc", _MLP_IN),
        "down": RoleSpec("mlp.c_proj", _MLP_OUT),
    }


ADAPTERS: tuple[type[ModelAdapter], ...] = (LlamaLikeAdapter, Phi3Adapter, GPT2Adapter)
