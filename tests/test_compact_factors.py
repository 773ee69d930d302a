"""Compact factors (Eq. ID): the same layer as two factors at the same rank, r (d1 + d2 - r) weights, Eq. 3 and the
overall budget counted in that format, and saved folders that reload with plain transformers after `import sfsd`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_tiny_llama
from transformers import AutoModelForCausalLM

import sfsd  # noqa: F401  registers the compressed classes
from sfsd.adapters import adapter_for
from sfsd.cli import main
from sfsd.compress import describe
from sfsd.decompose import (
    CompactLowRankLinear,
    LowRankLinear,
    factor_params,
    layer_beta,
    rank_for_budget,
    saves_parameters,
)
from sfsd.decompose.lowrank import SharedInputLowRank
from sfsd.errors import SfsdError
from sfsd.search.uniform import UniformConfig


def _factors(d_in: int, d_out: int, rank: int, deficient: int | None = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    first = torch.randn(rank, d_in, generator=gen, dtype=torch.float64)
    if deficient is not None:  # rows of first spanning only `deficient` dimensions: F_p is singular
        first = torch.randn(rank, deficient, generator=gen, dtype=torch.float64) @ first[:deficient]
    second = torch.randn(d_out, rank, generator=gen, dtype=torch.float64)
    bias = torch.randn(d_out, generator=gen, dtype=torch.float64)
    return first, second, bias


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize(("d_in", "d_out", "rank"), [(96, 64, 20), (64, 96, 40), (64, 64, 63), (48, 80, 47)])
def test_compact_layer_equals_two_factor_and_holds_r_d1_d2_minus_r(d_in, d_out, rank):
    first, second, bias = _factors(d_in, d_out, rank)
    x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = x @ (second @ first).T + bias  # float64
    for dtype in (torch.float64, torch.float32):
        like = torch.empty(0, dtype=dtype)
        two = LowRankLinear.from_factors(first, second, bias, like)
        compact = CompactLowRankLinear.from_factors(first, second, bias, like)
        with torch.no_grad():
            got, expected = compact(x.to(dtype)), two(x.to(dtype))
        assert got.shape == expected.shape == reference.shape
        assert _relative(got, reference) < 1e-5
        assert _relative(got, reference) < 10 * max(_relative(expected, reference), 1e-12)
    weights = sum(p.numel() for name, p in compact.named_parameters() if not name.endswith("bias"))
    assert weights == rank * (d_in + d_out - rank) == factor_params(rank, d_in, d_out, "compact")
    assert sum(p.numel() for p in two.parameters()) - d_out == factor_params(rank, d_in, d_out)
    assert sorted(compact.order.tolist()) == list(range(d_in))  # a permutation, not a parameter
    assert "order" not in dict(compact.named_parameters())


def test_rank_deficient_first_factor_is_still_reproduced():
    first, second, bias = _factors(64, 48, 20, deficient=12)
    compact = CompactLowRankLinear.from_factors(first, second, bias, torch.empty(0, dtype=torch.float64))
    x = torch.randn(7, 64, dtype=torch.float64)
    with torch.no_grad():
        assert _relative(compact(x), x @ (second @ first).T + bias) < 1e-8


def test_eq3_ranks_in_each_format():
    assert rank_for_budget(0.46, 576, 576) == 132 and rank_for_budget(0.46, 576, 576, "compact") == 152
    assert rank_for_budget(0.46, 576, 1536) == 192 and rank_for_budget(0.46, 576, 1536, "compact") == 214
    assert rank_for_budget(0.46, 1536, 576, "compact") == 214
    for d_in, d_out in [(576, 576), (576, 1536), (1536, 576), (64, 96)]:
        for beta in (0.1, 0.46, 0.9):
            rank = rank_for_budget(beta, d_in, d_out, "compact")
            assert layer_beta(rank, d_in, d_out, "compact") <= beta < layer_beta(rank + 1, d_in, d_out, "compact")
        assert rank_for_budget(1.0, d_in, d_out, "compact") == min(d_in, d_out)
    # a compact layer saves parameters at any rank below full
    assert saves_parameters(575, 576, 1536, "compact") and not saves_parameters(576, 576, 1536, "compact")
    assert not saves_parameters(420, 576, 1536)
    with pytest.raises(SfsdError, match="factor format"):
        rank_for_budget(0.5, 64, 64, "three-factor")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", default_model_dir, 2)


def _compress(tiny_folder, out, *extra) -> None:
    code = main(["compress", "--model", str(tiny_folder), "--beta", "0.46", "--last-blocks", "2",
                 "--calib-source", "random", "--calib-samples", "16", "--calib-seq-len", "16", "--out", str(out),
                 *extra])
    assert code == 0


def test_saved_compact_model_reloads_with_plain_transformers(tiny_folder, tmp_path, capsys):
    _compress(tiny_folder, tmp_path / "two")
    _compress(tiny_folder, tmp_path / "compact", "--factors", "compact")
    assert "factor format             compact" in capsys.readouterr().out
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert config["sfsd_factors"] == "compact" and config["sfsd_fused"] == {}  # compact layers are not fused
    assert "sfsd_factors" not in json.loads((tmp_path / "two" / "config.json").read_text())
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two").eval()
    compact = AutoModelForCausalLM.from_pretrained(tmp_path / "compact").eval()
    name = "model.layers.1.self_attn.q_proj"
    assert isinstance(compact.get_submodule(name), CompactLowRankLinear)
    assert isinstance(two.get_submodule(name), SharedInputLowRank)
    # the same beta buys a higher rank: 64 x 64 at 0.46, 14 -> 16; 64 -> 96, 17 -> 20
    assert (two.get_submodule(name).rank, compact.get_submodule(name).rank) == (14, 16)
    up = "model.layers.1.mlp.up_proj"
    assert (two.get_submodule(up).rank, compact.get_submodule(up).rank) == (17, 20)

    # The same logits as the in-memory model it was saved from (rebuilt from the same cached decompositions).
    from sfsd.models import load_model

    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    base, tokenizer = load_model(str(tiny_folder), "cpu")
    from sfsd.compress import CalibrationSpec, compress

    compress(base, tokenizer, beta=0.46, last_blocks=2, calibration=CalibrationSpec(source="random", samples=16,
                                                                                    seq_len=16),
             progress=False, factors="compact")
    with torch.no_grad():
        assert torch.equal(compact(ids).logits, base(ids).logits)

    # The overall budget counts exactly the weights the folder holds.
    info = describe(compact, macs=False)
    layers = adapter_for(compact).layers()
    held = 0
    for layer in layers:
        module = compact.get_submodule(layer.name)
        held += sum(p.numel() for n, p in module.named_parameters() if n in ("coupling", "second.weight", "weight"))
    assert info["factors"] == "compact"
    assert info["overall_budget"] == pytest.approx(held / sum(layer.params for layer in layers), abs=1e-12)
    assert info["overall_budget"] == compact.config.sfsd["overall_budget"]


def test_factor_format_joins_a_run_id_only_when_not_the_default():
    import shlex

    from sfsd.cli import build_parser
    from sfsd.cli.search import uniform_config_from_args
    from sfsd.dashboard import jobs

    assert "factors" not in UniformConfig(method="weight").to_dict()
    compact = UniformConfig(method="weight", factors="compact")
    assert compact.to_dict()["factors"] == "compact"
    assert UniformConfig.from_dict(compact.to_dict()).factors == "compact"
    assert jobs.run_id_of(compact) != jobs.run_id_of(UniformConfig(method="weight"))
    shown = jobs.command_line(compact)  # what a page shows rebuilds the same run
    assert "--factors compact" in shown
    rebuilt = uniform_config_from_args(build_parser().parse_args(shlex.split(shown)[1:]))
    assert rebuilt == compact and jobs.run_id_of(rebuilt) == jobs.run_id_of(compact)
    with pytest.raises(SfsdError, match="no thin factors"):
        UniformConfig(method="llm-pruner", factors="compact")


def test_table1_shows_only_the_paper_s_factor_format():
    """A compact run of the same protocol is not a row of Table 1 (the paper's format), nor does it replace one."""
    import pandas as pd

    from sfsd.dashboard import data

    uniform = pd.DataFrame([
        {"model": "m", "method": "feature", "beta": 0.46, "factors": "compact", "last_blocks": 11, "tasks": "",
         "limit": 100, "run_id": "c"},
        {"model": "m", "method": "feature", "beta": 0.46, "factors": "two-factor", "last_blocks": 11, "tasks": "",
         "limit": 100, "run_id": "f"},
    ])
    assert list(data.table1_rows(uniform, "m", 0.46, 11)["run_id"]) == ["f"]


def test_a_format_other_than_the_paper_s_is_a_protocol_of_its_own():
    """Compact or anchored runs of a beta and blocks make a Table 1 of their own, labelled with the format, and
    borrow the base row (the base model has no format); the paper's protocol keeps only its own runs."""
    import pandas as pd

    from sfsd.dashboard import data

    uniform = pd.DataFrame([
        {"model": "m", "method": "feature", "beta": 0.46, "factors": "compact", "calibration_stream": "anchored",
         "last_blocks": 11, "tasks": "", "limit": 100, "run_id": "ca"},
        {"model": "m", "method": "feature", "beta": 0.46, "factors": "compact", "last_blocks": 11, "tasks": "",
         "limit": 100, "run_id": "c"},
        {"model": "m", "method": "feature", "beta": 0.46, "last_blocks": 11, "tasks": "", "limit": 100, "run_id": "f"},
        {"model": "m", "method": "base", "beta": 1.0, "last_blocks": 0, "tasks": "", "limit": 100, "run_id": "b"},
    ])
    protocols = data.table1_protocols(uniform)
    assert [data.protocol_label(p) for p in protocols] == [
        "m · beta 0.46 · last 11 blocks · compact · anchored", "m · beta 0.46 · last 11 blocks · compact",
        "m · beta 0.46 · last 11 blocks"]
    assert [list(data.table1_rows(uniform, **p)["run_id"]) for p in protocols] == [["b", "ca"], ["b", "c"], ["b", "f"]]
    assert data.protocol_defaults({}, protocols[0])["calibration_stream"] == "anchored"
