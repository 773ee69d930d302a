"""Which modules of which architecture: find the adapter from the model's config."""

from __future__ import annotations

from torch import nn

from sfsd.adapters.base import ROLE_ORDER, LinearLayer, ModelAdapter, RoleSpec
from sfsd.adapters.families import ADAPTERS
from sfsd.errors import SfsdError

ADAPTER_BY_TYPE: dict[str, type[ModelAdapter]] = {t: a for a in ADAPTERS for t in a.model_types}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(ADAPTER_BY_TYPE)


def base_model_type(model_type: str) -> str:
    """The architecture behind a compressed model type (`sfsd_llama` -> `llama`)."""
    return model_type.removeprefix("sfsd_")


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of `model`'s architecture, or a clear error naming the supported ones."""
    config = getattr(model, "config", None)
    model_type = base_model_type(getattr(config, "model_type", "") or "")
    if model_type not in ADAPTER_BY_TYPE:
        raise SfsdError(
            f"architecture {model_type or type(model).__name__!r} is not supported: "
            f"use a model of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return ADAPTER_BY_TYPE[model_type](model)


__all__ = [
    "ADAPTER_BY_TYPE",
    "ROLE_ORDER",
    "SUPPORTED_MODEL_TYPES",
    "LinearLayer",
    "ModelAdapter",
    "RoleSpec",
    "adapter_for",
    "base_model_type",
]
