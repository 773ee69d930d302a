"""The paper's central claim on the real default model (SmolLM2-135M), on real text."""

from __future__ import annotations

import pytest

from sfsd.accounting import count_parameters
from sfsd.compress import CalibrationSpec, compress, describe
from sfsd.decompose import rank_for_budget
from sfsd.evaluate import perplexity
from sfsd.models import DEFAULT_MODEL, load_model

pytestmark = pytest.mark.slow


def _compressed_ppl(method: str) -> tuple[float, object]:
    model, tokenizer = load_model(DEFAULT_MODEL, "cpu")
    compress(model, tokenizer, method, beta=0.46, last_blocks=6, calibration=CalibrationSpec("mix", 32, 128),
             progress=False)
    result = perplexity(model, tokenizer, split="eval", seq_len=128, max_tokens=32 * 128, use_cache=False,
                        progress=False)
    assert result["seq_len"] == 128
    return result["ppl"], model


def test_feature_space_beats_weight_space_at_the_same_budget():
    feature_ppl, feature_model = _compressed_ppl("feature")
    weight_ppl, weight_model = _compressed_ppl("weight")
    info = describe(feature_model, macs=False)
    assert info["overall_budget"] == pytest.approx(describe(weight_model, macs=False)["overall_budget"])
    assert feature_ppl * 5 < weight_ppl, (feature_ppl, weight_ppl)

    # The parameter count of the compressed model matches the accounting: 30 blocks, last 6 decomposed.
    assert info["blocks"] == 30 and info["layers_decomposed"] == 42
    base_params = feature_model.config.sfsd["base"]["params"]
    saved = sum(
        d_in * d_out - rank_for_budget(0.46, d_in, d_out) * (d_in + d_out) - d_out  # the new compensating bias
        for d_in, d_out in [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
    ) * 6
    assert count_parameters(feature_model) == base_params - saved == info["params"]
    assert base_params == 134_515_008  # SmolLM2-135M, tied embeddings counted once
