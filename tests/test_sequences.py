"""The start-of-sequence rule (`sfsd.data.sequences`): a model whose tokenizer adds BOS (or a Gemma model) gets BOS
at the start of every perplexity window, calibration sequence and search window, the BOS position is never scored
and the records say so; a model without BOS (the default) gets exactly what it got before the rule existed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY

from sfsd.cli import main
from sfsd.compress import CalibrationSpec, calibration_tokens, compress, decomposition_folder
from sfsd.data import wiki_text
from sfsd.data.sequences import starts_with_bos
from sfsd.errors import SfsdError
from sfsd.evaluate import perplexity
from sfsd.evaluate.scoring import encode_request
from sfsd.models import DEFAULT_MODEL, load_model, model_starts_with_bos
from sfsd.search import MetricSpec, SearchConfig
from sfsd.search.heldout import heldout_value
from sfsd.search.metrics import METRICS

SEQ = 16
TOKENS = 10 * SEQ


def _save_gemma3(folder: Path, tokenizer_dir: str, add_bos: bool) -> Path:
    """A tiny random Gemma-3 text model with SmolLM2's tokenizer, its BOS switched on or off, saved like a user's
    converted checkpoint."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(**{**TINY, "vocab_size": 49152}, head_dim=16, sliding_window=8)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_bos_token = add_bos
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory, default_model_dir) -> Path:
    """Saved without BOS in its tokenizer: the Gemma rule must turn it on."""
    return _save_gemma3(tmp_path_factory.mktemp("gemma3") / "tiny-gemma3", default_model_dir, add_bos=False)


@pytest.fixture(scope="module")
def gemma(gemma_dir):
    return load_model(str(gemma_dir), "cpu")


def _inputs_seen(model, run) -> torch.Tensor:
    """Every input_ids row the model was called with while `run()` ran."""
    rows = []
    handle = model.register_forward_pre_hook(lambda _m, args, kwargs: rows.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).clone()), with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(rows)


def _bos_aware_perplexity(model, tokenizer, text: str, seq_len: int, max_tokens: int) -> float:
    """Written here, apart from sfsd: BOS + seq_len - 1 text tokens per window, the BOS position not scored."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(len(ids) // (seq_len - 1), max_tokens // seq_len)
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            window = torch.tensor([[tokenizer.bos_token_id, *ids[i * (seq_len - 1):(i + 1) * (seq_len - 1)]]])
            logp = torch.log_softmax(model(window).logits[0, :-1].double(), -1)
            nll -= float(logp.gather(1, window[0, 1:, None]).sum())
            count += seq_len - 1
    return math.exp(nll / count)


def test_the_default_models_tokenizer_adds_no_bos(default_model_dir):
    _, tokenizer = load_model(default_model_dir, "cpu")
    assert not starts_with_bos(tokenizer)
    assert model_starts_with_bos(DEFAULT_MODEL) is False  # what run ids assume without reading the folder
    assert "bos" not in SearchConfig(model=DEFAULT_MODEL).to_dict()


def test_a_run_of_a_missing_model_folder_has_an_id(tmp_path):
    """A page's empty state shows the demo's command lines for the configured model before it exists (CI
    caught a page raising here): the identity says no BOS, and loading the folder reports it missing."""
    missing = str(tmp_path / "no-model")
    assert model_starts_with_bos(missing) is False
    assert "bos" not in SearchConfig(model=missing).to_dict()
    with pytest.raises(SfsdError, match="does not exist"):
        load_model(missing, "cpu")


def test_a_gemma_tokenizer_saved_without_bos_gets_it_and_run_ids_say_so(gemma, gemma_dir):
    from transformers import AutoTokenizer

    assert not starts_with_bos(AutoTokenizer.from_pretrained(gemma_dir))  # as saved
    _, tokenizer = gemma
    assert starts_with_bos(tokenizer)  # after load_model: lm-eval's HFLM now sees the same sequences
    assert model_starts_with_bos(str(gemma_dir)) is True
    assert SearchConfig(model=str(gemma_dir)).to_dict()["bos"] is True


@pytest.mark.slow
def test_perplexity_windows_start_with_bos_which_is_not_scored(gemma):
    model, tokenizer = gemma
    text = wiki_text("eval")
    result = {}

    def run():
        result.update(perplexity(model, tokenizer, text=text, seq_len=SEQ, max_tokens=TOKENS, use_cache=False,
                                 progress=False))

    seen = _inputs_seen(model, run)
    assert seen.shape == (TOKENS // SEQ, SEQ)
    assert (seen[:, 0] == tokenizer.bos_token_id).all() and not (seen[:, 1:] == tokenizer.bos_token_id).any()
    assert (result["bos"], result["n_tokens"], result["n_windows"]) == (True, TOKENS, TOKENS // SEQ)
    assert result["ppl"] == pytest.approx(_bos_aware_perplexity(model, tokenizer, text, SEQ, TOKENS), rel=1e-5)


@pytest.mark.slow
def test_sfsd_ppl_of_a_bos_model_equals_an_independent_computation(gemma, gemma_dir, capsys):
    model, tokenizer = gemma
    assert main(["ppl", "--model", str(gemma_dir), "--seq-len", str(SEQ), "--max-tokens", str(TOKENS)]) == 0
    out = capsys.readouterr().out
    assert "(each BOS + text (BOS not scored))" in out
    shown = out.split("perplexity ")[1].split()[0].replace(",", "")  # "50033": whole numbers from 1,000 up
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    assert float(shown) == pytest.approx(_bos_aware_perplexity(model, tokenizer, wiki_text("eval"), SEQ, TOKENS),
                                         rel=1e-6, abs=0.5 * 10 ** -decimals)  # equal to the digits printed


@pytest.mark.slow
def test_calibration_search_heldout_and_scoring_start_with_bos(gemma):
    model, tokenizer = gemma
    bos = tokenizer.bos_token_id
    for source in ("wiki", "mix", "random"):
        ids, mask = calibration_tokens(tokenizer, CalibrationSpec(source=source, samples=5, seq_len=SEQ),
                                       model.config.vocab_size)
        assert ids.shape == (5, SEQ) and (ids[:, 0] == bos).all() and mask.all(), source
    spec = MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=SEQ, batch_size=2)
    windows = torch.cat(METRICS["ppl"](spec, tokenizer, model).batches)
    assert windows.shape == (4, SEQ) and (windows[:, 0] == bos).all()
    heldout = heldout_value(model, tokenizer, {"name": "ppl", "seq_len": SEQ})
    assert heldout["bos"] is True
    context, continuation = encode_request(tokenizer, "The cat sat on the", " mat")
    assert context[0] == bos and bos not in continuation  # StereoSet, disagreement and the task metric


def test_a_compressed_bos_model_records_it_and_keys_its_factors_apart(gemma_dir):
    model, tokenizer = load_model(str(gemma_dir), "cpu")
    calibration = CalibrationSpec(source="wiki", samples=4, seq_len=SEQ)
    names = ["model.layers.2.mlp.down_proj"]
    assert decomposition_folder(model, "feature", calibration, names, "w", bos=True) != decomposition_folder(
        model, "feature", calibration, names, "w")
    compress(model, tokenizer, "feature", beta=0.5, last_blocks=1, calibration=calibration, progress=False)
    assert model.config.sfsd["bos"] is True


@pytest.mark.slow
def test_the_default_models_numbers_are_those_computed_before_the_rule(default_model_dir, tmp_path):
    """Values computed with the code before `sfsd.data.sequences` existed (commit fcef82d, /work/notes/golden.py):
    the default model's perplexity, calibration token ids, a search's run id and its decisions."""
    from sfsd.cache import tensors_sha256
    from sfsd.runs import decided_ranks, run_id_for
    from sfsd.search import run_search

    model, tokenizer = load_model(default_model_dir, "cpu")
    res = perplexity(model, tokenizer, split="eval", seq_len=128, max_tokens=2048, use_cache=False, progress=False)
    assert (res["ppl"], res["n_tokens"], res["bos"]) == (pytest.approx(33.256735642364426, rel=1e-6), 2048, False)
    hashes = {"mix": "d825d0b4a43aaac8812836e49c86ee1dd3015f3147c424bf175bd143a45f82f9",
              "wiki": "e1d83717f7dde436d94894274611ba2479e9596258b0393baf329b70a5b45412"}
    for source, digest in hashes.items():
        ids, mask = calibration_tokens(tokenizer, CalibrationSpec(source=source, samples=32, seq_len=128),
                                       model.config.vocab_size)
        assert tensors_sha256([("input_ids", ids), ("attention_mask", mask)]) == digest, source
    config = SearchConfig(model=DEFAULT_MODEL, method="feature",
                          metric=MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=32),
                          calibration=CalibrationSpec(source="wiki", samples=16, seq_len=64), first_block=29,
                          roles=["o", "down"])
    assert run_id_for(config.to_dict()) == "search-smollm2-135m-feature-ppl-82233753e4c3"
    run = run_search(config, root=tmp_path, progress=False)
    assert decided_ranks(run.decisions()) == {"model.layers.29.mlp.down_proj": 251,
                                              "model.layers.29.self_attn.o_proj": 28}
