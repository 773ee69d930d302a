"""Closed-loop calibration and the anchored fit (issue 25, levers 1 and 2), on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model

from sfsd.adapters import adapter_for
from sfsd.calibration import InputStatistics
from sfsd.calibration.paired import PairedStatistics
from sfsd.closed_loop import check_stream, stream_key_fields
from sfsd.compress import CalibrationSpec, compress, decomposition_folder, save_compressed, stream_decompositions
from sfsd.decompose import apply_ranks, decompose_layer, uniform_ranks
from sfsd.decompose.anchored import anchored_feature
from sfsd.errors import SfsdError

CALIB = CalibrationSpec(source="random", samples=12, seq_len=24)


def _layers(model, blocks):
    return [layer for layer in adapter_for(model).layers() if layer.block in blocks]


def _product(dec, rank):
    first, second, bias = dec.factors(rank)
    return second.double() @ first.double(), bias.double()


def test_closed_loop_with_nothing_compressed_upstream_is_open_loop():
    model = tiny_model("llama")
    layers = _layers(model, {1, 2})
    ranks = {layer.name: 4 for layer in layers}
    open_loop = stream_decompositions(copy.deepcopy(model), None, layers, "feature", CALIB, batch_size=5,
                                      progress=False)
    closed = stream_decompositions(copy.deepcopy(model), None, layers, "feature", CALIB, batch_size=5,
                                   progress=False, stream="closed-loop", ranks=ranks)
    # the first stage of the first decomposed block (q/k/v) reads the original stream: the very same statistics
    for role in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.1.self_attn.{role}"
        for field in ("basis", "coeffs", "spectrum", "mean_shift"):
            torch.testing.assert_close(getattr(closed[name], field), getattr(open_loop[name], field), rtol=0, atol=0)
    # later stages read the compressed layers' outputs: different statistics
    assert not torch.allclose(closed["model.layers.2.mlp.down_proj"].spectrum,
                              open_loop["model.layers.2.mlp.down_proj"].spectrum)
    # at full rank the compressed model is the original (to float32 round-off): the same fits at any rank
    full = {layer.name: min(layer.d_in, layer.d_out) for layer in layers}
    at_full = stream_decompositions(copy.deepcopy(model), None, layers, "feature", CALIB, batch_size=5,
                                    progress=False, stream="closed-loop", ranks=full)
    for name, dec in open_loop.items():
        (a, b), (c, d) = _product(at_full[name], 8), _product(dec, 8)
        torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-3, msg=name)
        torch.testing.assert_close(b, d, rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.parametrize("d_out,d_in", [(6, 10), (14, 10)])  # eigh of W* C W*^T, and the SVD branch (d_out > d_in)
@pytest.mark.parametrize("ridge", [0.0, 1.0])
def test_anchored_fit_on_the_original_inputs_is_feature(d_out, d_in, ridge):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, d_in, generator=gen, dtype=torch.float64) @ torch.randn(d_in, d_in, generator=gen,
                                                                                 dtype=torch.float64) + 0.3
    weight = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    bias = torch.randn(d_out, generator=gen, dtype=torch.float64)
    paired = PairedStatistics.empty(d_in, torch.device("cpu"))
    paired.add(x, x)
    stats = InputStatistics.empty(d_in, torch.device("cpu"))
    stats.add(x)
    anchored = anchored_feature(weight, bias, paired, ridge=ridge)
    feature = decompose_layer("feature", weight, bias, stats, torch.float64)
    torch.testing.assert_close(anchored.spectrum, feature.spectrum, rtol=1e-8, atol=1e-8)
    signs = torch.sign((anchored.basis * feature.basis).sum(0))  # eigenvectors are defined up to sign
    torch.testing.assert_close(anchored.basis * signs, feature.basis, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(anchored.coeffs * signs[:, None], feature.coeffs, rtol=1e-8, atol=1e-8)
    for rank in (1, 3, min(d_in, d_out)):
        torch.testing.assert_close(anchored.factors(rank)[2], feature.factors(rank)[2], rtol=1e-8, atol=1e-8)


def _inputs(model, name, ids):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1]).double()


@pytest.mark.parametrize("name", ["model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj"])
def test_anchored_fit_beats_the_open_loop_fit_on_the_compressed_stream(name):
    """Blocks 0-1 compressed open loop; block 2's layer fit (a) open loop on x, (b) anchored on (x, x'): on the
    compressed model's inputs x', (b)'s error against the original outputs W x + b0 is the smaller."""
    model = tiny_model("llama")
    upstream = _layers(model, {0, 1})
    compressed = copy.deepcopy(model)
    decs = stream_decompositions(copy.deepcopy(model), None, upstream, "feature", CALIB, batch_size=5, progress=False)
    apply_ranks(compressed, decs, {layer.name: 6 for layer in upstream})
    ids = torch.randint(3, 256, (40, 24), generator=torch.Generator().manual_seed(1))
    x, xp = _inputs(model, name, ids), _inputs(compressed, name, ids)
    module = model.get_submodule(name)
    weight, bias = module.weight.detach().double(), module.bias
    target = x @ weight.T + (0 if bias is None else bias.double())
    stats = InputStatistics.empty(x.shape[1], torch.device("cpu"))
    stats.add(x)
    paired = PairedStatistics.empty(x.shape[1], torch.device("cpu"))
    paired.add(x, xp)

    def error(dec, rank):
        first, second, b = (t.double() for t in dec.factors(rank))
        return float(((target - (xp @ first.T @ second.T + b)) ** 2).sum(1).mean())

    open_loop = decompose_layer("feature", weight, bias, stats, torch.float64)
    for rank in (2, 8):
        assert error(anchored_feature(weight, bias, paired, ridge=0.0), rank) <= error(open_loop, rank) + 1e-9
        assert error(anchored_feature(weight, bias, paired), rank) <= error(open_loop, rank) + 1e-9


def test_closed_loop_compress_saves_reloads_and_has_its_own_keys(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    names = [layer.name for layer in _layers(model, {1, 2})]
    ranks = uniform_ranks(adapter_for(model).layers(), 0.5, 2, 3)

    def key(s, chosen=ranks):
        return decomposition_folder(model, "feature", CALIB, names, stream=stream_key_fields(s, chosen))

    assert key("open-loop") == decomposition_folder(model, "feature", CALIB, names)  # open-loop keys unchanged
    assert len({key("open-loop"), key("closed-loop"), key("anchored"),
                key("closed-loop", {**ranks, names[0]: 1})}) == 4
    ids = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    opened = compress(copy.deepcopy(model), None, "feature", beta=0.5, last_blocks=2, calibration=CALIB,
                      batch_size=5, progress=False)
    with torch.no_grad():
        open_logits = opened(input_ids=ids).logits
    assert "calibration_stream" not in opened.config.sfsd
    for stream in ("closed-loop", "anchored"):
        closed = compress(copy.deepcopy(model), None, "feature", beta=0.5, last_blocks=2, calibration=CALIB,
                          batch_size=5, progress=False, calibration_stream=stream)
        assert closed.config.sfsd["calibration_stream"] == stream
        with torch.no_grad():
            logits = closed(input_ids=ids).logits
        assert not torch.allclose(logits, open_logits)
        again = compress(copy.deepcopy(model), None, "feature", beta=0.5, last_blocks=2, calibration=CALIB,
                         batch_size=5, progress=False, calibration_stream=stream)  # every block from the cache
        with torch.no_grad():
            torch.testing.assert_close(again(input_ids=ids).logits, logits)
        save_compressed(closed, None, tmp_path / stream)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / stream).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=ids).logits, logits)


def test_run_ids_and_refusals():
    from sfsd.runs.ids import run_id_for
    from sfsd.search.uniform import UniformConfig

    base = UniformConfig(method="feature", calibration=CALIB)
    assert "calibration_stream" not in base.to_dict()  # open-loop runs keep their ids
    ids = {run_id_for(UniformConfig(method="feature", calibration=CALIB, calibration_stream=s).to_dict())
           for s in ("open-loop", "closed-loop", "anchored")}
    assert len(ids) == 3
    with pytest.raises(SfsdError, match="--method feature"):
        check_stream("anchored", "svdllm")
    with pytest.raises(SfsdError, match="open-loop"):
        check_stream("closed-loop", "weight")
    check_stream("closed-loop", "svdllm")
    model = tiny_model("llama")
    with pytest.raises(SfsdError, match="needs the ranks"):
        stream_decompositions(model, None, _layers(model, {2}), "feature", CALIB, progress=False,
                              stream="closed-loop")


def test_a_search_takes_a_stream_only_with_a_target_budget_and_names_it_on_the_command_line():
    from sfsd.cli.search import config_from_argv
    from sfsd.search import SearchConfig

    config = config_from_argv(["--target-budget", "0.8", "--strategy", "refined", "--calibration-stream", "anchored"])
    assert config.calibration_stream == "anchored" and config.to_dict()["calibration_stream"] == "anchored"
    assert "calibration_stream" not in SearchConfig(target_budget=0.8).to_dict()  # open-loop runs keep their ids
    with pytest.raises(SfsdError, match="goes with --target-budget"):
        SearchConfig(calibration_stream="closed-loop")  # Algorithm 1's trials are open loop
    with pytest.raises(SfsdError, match="goes with --target-budget"):
        SearchConfig(calibration_stream="closed-loop", target_budget=0.8, strategy="alg1")
    with pytest.raises(SfsdError, match="--method feature"):
        SearchConfig(calibration_stream="anchored", target_budget=0.8, method="svdllm")
    import argparse

    from sfsd.cli import frontier

    parser = argparse.ArgumentParser()
    frontier.register(parser.add_subparsers())
    assert parser.parse_args(["frontier", "--calibration-stream", "anchored"]).calibration_stream == "anchored"


def test_a_target_budget_search_builds_its_final_model_with_its_stream(tmp_path, default_model_dir):
    """The ranks are allocated on open-loop trials (the same as the open-loop run's); the final model, its search
    metric, its held-out check and the model every later step rebuilds (materialize, the frontier's evaluation)
    are compress(ranks) with the stream."""
    from conftest import save_tiny_llama

    from sfsd.evaluate.keys import compressed_model_key
    from sfsd.models import load_model
    from sfsd.runs.frontier import frontier_frame
    from sfsd.search import MetricSpec, SearchConfig, run_search
    from sfsd.search.surgical import model_at_step

    folder = save_tiny_llama(tmp_path / "tiny", default_model_dir, 3)
    calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
    common = dict(model=str(folder), metric=MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=32),
                  calibration=calibration, strategy="spectrum", target_budget=0.8)
    open_run = run_search(SearchConfig(**common), progress=False)
    anchored = run_search(SearchConfig(**common, calibration_stream="anchored"), progress=False)
    assert anchored.id != open_run.id and "calibration_stream" not in open_run.config
    opened, result = open_run.result(), anchored.result()
    assert result["ranks"] == opened["ranks"] and result["calibration_stream"] == "anchored"
    built, tokenizer, ranks = model_at_step(anchored, len(anchored.decisions()))
    reference, _ = load_model(str(folder), "cpu")
    compress(reference, tokenizer, "feature", ranks=ranks, calibration=calibration, progress=False,
             calibration_stream="anchored")
    ids = torch.randint(3, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(built(ids).logits, reference(ids).logits)
        open_model, _, _ = model_at_step(open_run, len(open_run.decisions()))
        assert not torch.allclose(open_model(ids).logits, built(ids).logits, atol=1e-4)
    assert result["final_metric"] != opened["final_metric"]
    assert result["heldout"]["final"]["value"] != opened["heldout"]["final"]["value"]
    assert compressed_model_key(anchored.config, ranks) != compressed_model_key(open_run.config, ranks)
    lines = set(frontier_frame()["strategy"])  # the test's own cache
    assert {"spectrum", "spectrum anchored"} <= lines  # a line of its own on the Frontier
