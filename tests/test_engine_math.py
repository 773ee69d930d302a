"""The decompositions on single layers: exactness, optimality, and the identities the issue names."""

from __future__ import annotations

import pytest
import torch

from sfsd.adapters import LinearLayer
from sfsd.calibration import InputStatistics
from sfsd.decompose import decompose_layer, overall_budget, rank_for_budget, uniform_ranks
from sfsd.errors import SfsdError


def _layer_data(d_in: int, d_out: int, n: int = 4000, seed: int = 0):
    """Correlated, non-centred inputs (like real activations) and a layer with a bias."""
    gen = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -2, d_in, dtype=torch.float64)
    mixing = torch.randn(d_in, d_in, generator=gen, dtype=torch.float64) * decay
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64) @ mixing.T + 0.7
    weight = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / d_in**0.5
    bias = torch.randn(d_out, generator=gen, dtype=torch.float64) * 0.1
    stats = InputStatistics.empty(d_in, torch.device("cpu"))
    stats.add(x)
    return x, weight, bias, stats


def _apply(dec, rank, x, bias=None):
    first, second, b = dec.factors(rank)
    b = b if bias is None else bias
    out = x @ first.T.to(x.dtype) @ second.T.to(x.dtype)
    return out if b is None else out + b.to(x.dtype)


def _sq_error(x, weight, bias, approx):
    return float(((x @ weight.T + bias - approx) ** 2).sum(1).mean())


def test_rank_for_budget_is_eq3():
    assert rank_for_budget(0.46, 576, 576) == 132  # floor(0.46 * 576 * 576 / 1152) = floor(132.48)
    assert rank_for_budget(0.33, 4096, 11008) == 985  # floor(0.33 * 4096 * 11008 / 15104)
    assert rank_for_budget(0.01, 8, 8) == 1  # at least 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(SfsdError, match="beta"):
            rank_for_budget(bad, 8, 8)


def test_overall_budget_of_table1_protocol():
    """Last 12 of 32 blocks at 0.46 is the paper's 80% budget; last 24 at 0.33 its 50%."""
    dims = {"q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
            "gate": (4096, 11008), "up": (4096, 11008), "down": (11008, 4096)}
    layers = [LinearLayer(f"b{b}.{r}", b, r, d_in, d_out, f"{b}")
              for b in range(32) for r, (d_in, d_out) in dims.items()]
    b80 = overall_budget(layers, uniform_ranks(layers, 0.46, 12, 32))
    b50 = overall_budget(layers, uniform_ranks(layers, 0.33, 24, 32))
    assert b80 == pytest.approx(0.7975, abs=0.002)
    assert b50 == pytest.approx(0.4975, abs=0.002)


@pytest.mark.parametrize("d_in,d_out", [(24, 24), (24, 12), (12, 30)])
def test_full_rank_feature_space_reproduces_outputs(d_in, d_out):
    x, weight, bias, stats = _layer_data(d_in, d_out)
    dec = decompose_layer("feature", weight, bias, stats, dtype=torch.float64)
    full = min(d_in, d_out)
    assert torch.allclose(_apply(dec, full, x), x @ weight.T + bias, atol=1e-5)


@pytest.mark.parametrize("d_in,d_out", [(24, 24), (32, 16), (16, 40)])
def test_feature_error_is_discarded_eigenvalues_and_beats_weight_svd(d_in, d_out):
    x, weight, bias, stats = _layer_data(d_in, d_out)
    feat = decompose_layer("feature", weight, bias, stats, dtype=torch.float64)
    svd = decompose_layer("weight", weight, bias, stats, dtype=torch.float64)
    for rank in range(1, min(d_in, d_out)):
        err = _sq_error(x, weight, bias, _apply(feat, rank, x))
        assert err == pytest.approx(feat.residual_energy(rank), rel=1e-6, abs=1e-10)
        assert err <= _sq_error(x, weight, bias, _apply(svd, rank, x)) + 1e-12


def test_bias_compensation_never_hurts_and_centring_matters():
    x, weight, bias, stats = _layer_data(32, 24)
    centred = decompose_layer("feature", weight, bias, stats, dtype=torch.float64)
    uncentred = decompose_layer("feature-uncentred", weight, bias, stats, dtype=torch.float64)
    differs = False
    for rank in range(1, 24):
        with_comp = _sq_error(x, weight, bias, _apply(centred, rank, x))
        without = _sq_error(x, weight, bias, _apply(centred, rank, x, bias=bias))
        eq4 = _sq_error(x, weight, bias, _apply(uncentred, rank, x))
        assert with_comp <= without + 1e-12
        assert with_comp <= eq4 + 1e-12  # the centred form is the optimal affine map
        differs |= eq4 > with_comp * 1.01
    assert differs, "the uncentred Eq. 4 should be measurably worse on non-centred inputs"


def test_uncentred_feature_space_equals_svd_llm_on_calibration_data():
    x, weight, bias, stats = _layer_data(32, 24)
    uncentred = decompose_layer("feature-uncentred", weight, bias, stats, dtype=torch.float64)
    whitened = decompose_layer("svdllm", weight, bias, stats, dtype=torch.float64)
    for rank in (1, 5, 12, 20):
        assert torch.allclose(_apply(uncentred, rank, x), _apply(whitened, rank, x), atol=1e-7)


def test_asvd_and_weight_space_are_exact_at_full_rank():
    x, weight, bias, stats = _layer_data(20, 28)
    for method in ("weight", "asvd", "svdllm"):
        dec = decompose_layer(method, weight, bias, stats, dtype=torch.float64)
        assert torch.allclose(_apply(dec, 20, x), x @ weight.T + bias, atol=1e-6), method


def test_rank_outside_range_is_a_clear_error():
    _, weight, bias, stats = _layer_data(8, 8)
    dec = decompose_layer("feature", weight, bias, stats)
    with pytest.raises(SfsdError, match="outside 1..8"):
        dec.factors(9)
    with pytest.raises(SfsdError, match="unknown method"):
        decompose_layer("pca", weight, bias, stats)


def test_wilson_interval_matches_published_values():
    """Wilson 95% interval for 81/263 is [0.2553, 0.3662] (Newcombe 1998, Table I example)."""
    from sfsd.evaluate.intervals import wilson_interval

    low, high = wilson_interval(81, 263)
    assert abs(low - 0.2553) < 5e-4 and abs(high - 0.3662) < 5e-4
    low0, high0 = wilson_interval(0, 10)
    assert low0 == 0.0 and 0.27 < high0 < 0.31  # Newcombe: 0/10 -> [0, 0.2775]



def _top_eigvecs(matrix, rank):
    values, vectors = torch.linalg.eigh(matrix)
    return vectors[:, values.argsort(descending=True)[:rank]]


@pytest.mark.parametrize("d_in,d_out", [(32, 24), (16, 40)])
def test_feature_paper_bias_is_eq4_computed_independently(d_in, d_out):
    """Sec. 3.2 as written: V_r from the uncentred Y Y^T (Y = W X), b = b0 + V_rc V_rc^T W x_bar (Eq. 4)."""
    x, weight, bias, stats = _layer_data(d_in, d_out)
    assert x.mean(0).abs().min() > 0.1  # the bias only matters for a non-zero input mean
    dec = decompose_layer("feature-paper", weight, bias, stats, dtype=torch.float64)
    y = x @ weight.T
    for rank in (1, 5, 12):
        v_r = _top_eigvecs(y.T @ y, rank)
        v_c = _top_eigvecs(y.T @ y, d_out)[:, rank:]  # the discarded directions, V_r^c
        expected = bias + v_c @ (v_c.T @ (weight @ x.mean(0)))
        _, second, got = dec.factors(rank)
        assert torch.allclose(got, expected, atol=1e-8)
        assert torch.allclose(second @ second.T, v_r @ v_r.T, atol=1e-8)  # same subspace


def test_feature_official_is_the_released_codes_projection():
    """nyunAI/SFSD-LLM DecomposeLinearEigen: eigenvectors of torch.cov(Y), bias V_r V_r^T b0, no compensation."""
    x, weight, bias, stats = _layer_data(32, 24)
    dec = decompose_layer("feature-official", weight, bias, stats, dtype=torch.float64)
    y = x @ weight.T + bias
    for rank in (1, 5, 12):
        v_r = _top_eigvecs(torch.cov(y.T), rank)
        _, second, got = dec.factors(rank)
        assert torch.allclose(second @ second.T, v_r @ v_r.T, atol=1e-8)
        assert torch.allclose(got, v_r @ (v_r.T @ bias), atol=1e-10)
    no_bias = decompose_layer("feature-official", weight, None, stats, dtype=torch.float64)
    assert no_bias.factors(5)[2] is None


@pytest.mark.parametrize("d_in,d_out", [(32, 24), (16, 40)])
def test_feature_variants_error_ordering_is_strict(d_in, d_out):
    """feature < feature-paper < feature-uncentred and feature < feature-official, at every cut rank."""
    x, weight, bias, stats = _layer_data(d_in, d_out)
    decs = {m: decompose_layer(m, weight, bias, stats, dtype=torch.float64)
            for m in ("feature", "feature-paper", "feature-uncentred", "feature-official")}
    for rank in range(1, min(d_in, d_out)):
        err = {m: _sq_error(x, weight, bias, _apply(dec, rank, x)) for m, dec in decs.items()}
        assert err["feature"] < err["feature-paper"] < err["feature-uncentred"], (rank, err)
        assert err["feature"] < err["feature-official"], (rank, err)
