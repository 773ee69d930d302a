"""The field's hub datasets and leak refusal, offline: small local copies with the hub datasets' columns.

Every hub dataset is read through `sfsd.data.hub.load_hub_split`, which takes a `save_to_disk`
folder under $SFSD_DATASETS_DIR instead of the hub; the code that joins, windows, samples and
partitions the rows is the real one.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import save_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfsd.cli import main
from sfsd.data import calibration_tokens, hub
from sfsd.data.leakage import (
    Rows,
    calibration_rows,
    check_no_leak,
    ppl_eval_rows,
    search_rows,
    task_eval_rows,
)
from sfsd.data.paper_tasks import (
    PAPER_EVAL,
    PAPER_SEARCH_TASKS,
    PAPER_TASK_NAMES,
    PAPER_TRAIN,
    choice_row,
    document_text,
    paper_documents,
    paper_search_rows,
    partition,
)
from sfsd.errors import SfsdError
from sfsd.evaluate import perplexity
from sfsd.evaluate.perplexity import hub_eval_text

WORDS = ("the river stone light house garden winter market bridge silver quiet morning paper window "
         "forest engine letter island music north yellow station ancient simple crowd ocean").split()


def sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n)).capitalize() + "."


def wikitext_rows(rng: np.random.Generator, n_articles: int) -> list[str]:
    """WikiText's row layout: a heading row, paragraph rows, empty rows."""
    rows = []
    for a in range(n_articles):
        rows += ["", f" = Article {a} = \n", ""]
        rows += [" " + " ".join(sentence(rng, 12) for _ in range(4)) + " \n" for _ in range(3)]
    return rows


def task_rows(task: str, rng: np.random.Generator, n: int) -> dict[str, list]:
    """`n` train rows with the hub dataset's columns (the values are synthetic text)."""
    s = lambda k=8: sentence(rng, k)  # noqa: E731
    if task == "boolq":
        return {"question": [s(6).rstrip(".").lower() for _ in range(n)], "passage": [s(30) for _ in range(n)],
                "idx": list(range(n)), "label": [int(rng.integers(2)) for _ in range(n)]}
    if task == "piqa":
        return {"goal": [s() for _ in range(n)], "sol1": [s() for _ in range(n)], "sol2": [s() for _ in range(n)],
                "label": [int(rng.integers(2)) for _ in range(n)]}
    if task == "hellaswag":
        return {"ind": list(range(n)), "activity_label": ["Walking"] * n, "ctx_a": [s() for _ in range(n)],
                "ctx_b": ["the dog [title] runs" for _ in range(n)], "ctx": [s() for _ in range(n)],
                "endings": [[s(5) for _ in range(4)] for _ in range(n)], "source_id": ["x"] * n,
                "split": ["train"] * n, "split_type": ["indomain"] * n,
                "label": [str(int(rng.integers(4))) for _ in range(n)]}
    if task == "winogrande":
        return {"sentence": [f"{s(5)[:-1]} _ {s(5)}" for _ in range(n)], "option1": ["Anna"] * n,
                "option2": ["Ben"] * n, "answer": [str(int(rng.integers(1, 3))) for _ in range(n)]}
    return {"id": [f"q{i}" for i in range(n)], "question": [s() for _ in range(n)],
            "choices": [{"text": [s(3) for _ in range(4)], "label": ["A", "B", "C", "D"]} for _ in range(n)],
            "answerKey": [str(rng.choice(["A", "B", "C", "D"])) for _ in range(n)]}


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """Local copies (save_to_disk) of every hub dataset sfsd reads, laid out as $SFSD_DATASETS_DIR wants."""
    import datasets

    root = tmp_path_factory.mktemp("hub")
    rng = np.random.default_rng(0)

    def save(spec: hub.HubSplit, columns: dict[str, list]) -> None:
        datasets.Dataset.from_dict(columns).save_to_disk(str(spec.local_folder(root) / spec.split))

    save(hub.hub_dataset("wikitext2", "train"), {"text": wikitext_rows(rng, 12)})
    save(hub.hub_dataset("wikitext2", "test"), {"text": wikitext_rows(rng, 4)})
    save(hub.hub_dataset("ptb", "test"), {"sentence": [sentence(rng, 10).lower() for _ in range(60)]})
    c4_docs = [sentence(rng, 3) for _ in range(2010)]
    save(hub.hub_dataset("c4", "validation"), {"text": c4_docs, "url": ["u"] * 2010, "timestamp": ["t"] * 2010})
    save(hub.hub_dataset("c4", "train"), {"text": [sentence(rng, 40) for _ in range(50)]})
    for i, task in enumerate(PAPER_TASK_NAMES):
        save(PAPER_TRAIN[task], task_rows(task, rng, 40 + i))
        save(PAPER_EVAL[task], task_rows(task, rng, 10 + i))  # what lm-eval's own task evaluates
    return root


@pytest.fixture
def local_hub(hub_dir, monkeypatch):
    monkeypatch.setenv(hub.DATASETS_DIR_ENV, str(hub_dir))
    return hub_dir


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub off (results go to conftest's private cache, where the offline pack is the shared one)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# ---------------------------------------------------------------- perplexity as the field computes it


def _field_ppl(model, ids: list[int], seq_len: int, batch_size: int = 16) -> tuple[float, int]:
    """SVD-LLM's get_test_data + ppl_eval, written out: windows of seq_len, read in batches (as its loader
    does; c4's 300 windows at once would be 4 GB of logits), mean token loss over every window, exp."""
    n = len(ids) // seq_len
    windows = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
    losses = []
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(batch).logits
            losses.append(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                            batch[:, 1:].reshape(-1), reduction="none"))
    return math.exp(torch.cat(losses).mean().item()), n


@pytest.mark.parametrize("dataset,column,split,limit", [("wikitext2", "text", "test", None),
                                                        ("ptb", "sentence", "test", None),
                                                        pytest.param("c4", "text", "validation", 2000,
                                                                     marks=pytest.mark.slow)])  # 2,000 documents
def test_ppl_joins_rows_and_cuts_non_overlapping_windows(local_hub, model, tokenizer, dataset, column, split, limit):
    import datasets

    spec = hub.hub_dataset(dataset, split)
    rows = list(datasets.load_from_disk(str(spec.local_folder(local_hub) / split))[column])
    joined = "\n\n".join(rows[:limit])
    assert hub_eval_text(dataset) == joined  # c4: only the first 2000 of the 2010 documents
    ids = tokenizer(joined)["input_ids"]
    result = perplexity(model, tokenizer, dataset=dataset, seq_len=64, use_cache=False, progress=False)
    expected, n = _field_ppl(model, ids, 64)
    assert (result["n_windows"], result["n_tokens"], result["split"]) == (n, 64 * n, split)
    assert result["ppl"] == pytest.approx(expected, rel=1e-5)


def test_ppl_cli_on_local_wikitext2(local_hub, tmp_path, default_model_dir, capsys):
    folder = save_tiny_llama(tmp_path / "tiny", default_model_dir, 1)
    assert main(["ppl", str(folder), "--dataset", "wikitext2", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "on wikitext2 test:" in out and "windows" in out


# ---------------------------------------------------------------- calibration from the hub


def test_wikitext2_and_c4_calibration_are_random_windows_of_the_joined_train_text(local_hub, tokenizer):
    import datasets

    for name in ("wikitext2", "c4"):
        spec = hub.hub_dataset(name, "train")
        joined = "\n\n".join(datasets.load_from_disk(str(spec.local_folder(local_hub) / "train"))["text"])
        data = calibration_tokens(tokenizer, name, n_samples=6, seq_len=48, seed=1)
        assert data.input_ids.shape == (6, 48) and bool((data.attention_mask == 1).all())
        for window in data.input_ids:  # byte-level BPE: each window decodes to a piece of the joined text
            assert tokenizer.decode(window, clean_up_tokenization_spaces=False) in joined
        again = calibration_tokens(tokenizer, name, n_samples=6, seq_len=48, seed=1)
        other = calibration_tokens(tokenizer, name, n_samples=6, seq_len=48, seed=2)
        assert torch.equal(data.input_ids, again.input_ids) and not torch.equal(data.input_ids, other.input_ids)
        assert data.describe()["dataset"] == spec.label


def test_paper_mix_has_equal_shares_from_calib_train_rows_and_is_seeded(local_hub, tokenizer):
    data = calibration_tokens(tokenizer, "paper-mix", n_samples=20, seq_len=32, seed=0)
    shares = Counter(data.sample_sources)
    assert shares == {t: (4 if i < 2 else 3) for i, t in enumerate(PAPER_TASK_NAMES)}  # 20 = 6 x 3 + 2
    assert data.sample_sources == [PAPER_TASK_NAMES[i % 6] for i in range(20)]
    assert {t: p["samples"] for t, p in data.describe()["parts"].items()} == dict(shares)
    assert torch.equal(data.input_ids, calibration_tokens(tokenizer, "paper-mix", 20, 32, seed=0).input_ids)
    assert not torch.equal(data.input_ids, calibration_tokens(tokenizer, "paper-mix", 20, 32, seed=1).input_ids)
    # every whole document inside a window is a calibration (80%) train row of that window's task
    for window, task in zip(data.input_ids, data.sample_sources, strict=True):
        calib, search = set(paper_documents(task, "calib")), set(paper_documents(task, "search"))
        pieces = tokenizer.decode(window, clean_up_tokenization_spaces=False).split(tokenizer.eos_token)[1:-1]
        assert all(p in calib and p not in search for p in pieces)
    default = calibration_tokens(tokenizer, "paper-mix", seed=0)  # the paper's 512 x 128
    assert default.input_ids.shape == (512, 128)
    assert Counter(default.sample_sources) == dict(zip(PAPER_TASK_NAMES, (86, 86, 85, 85, 85, 85), strict=True))


def test_train_rows_are_partitioned_20_80_independently_of_the_seed(local_hub):
    parts = partition("boolq", 50)
    assert len(parts["search"]) == 10 and len(parts["calib"]) == 40
    search, calib = set(parts["search"]), set(parts["calib"])
    assert not search & calib and search | calib == set(range(50))
    assert all(np.array_equal(parts[k], partition("boolq", 50)[k]) for k in parts)
    rows = paper_search_rows("piqa")
    assert len(rows) == round(0.2 * 41) and all(r["split"] == "search" for r in rows)
    assert rows[0]["query"].startswith("Question: ") and rows[0]["query"].endswith("\nAnswer:")


def test_rows_read_as_lm_eval_presents_them():
    boolq = choice_row("boolq", {"passage": "P.", "question": "is it", "label": 1}, "b0")
    assert (boolq["query"], boolq["choices"], boolq["label"]) == ("P.\nQuestion: is it?\nAnswer:", ["no", "yes"], 1)
    arc = choice_row("arc_easy", {"question": "Q?", "answerKey": "C",
                                  "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}}, "a0")
    assert (arc["query"], arc["label"]) == ("Question: Q?\nAnswer:", 2)
    hella = choice_row("hellaswag", {"activity_label": "Cooking", "ctx_a": "A man stirs.", "ctx_b": "then he",
                                     "endings": ["adds salt [step]", "sits"], "label": "0"}, "h0")
    assert hella["query"] == "Cooking: A man stirs. Then he" and hella["choices"] == ["adds salt ", "sits"]
    wino = {"sentence": "Anna helped Ben because _ was kind.", "option1": "Anna", "option2": "Ben", "answer": "2"}
    assert document_text("winogrande", wino) == "Anna helped Ben because Ben was kind."
    with pytest.raises(SfsdError, match="one context per choice"):
        choice_row("winogrande", wino, "w0")
    assert "winogrande" not in PAPER_SEARCH_TASKS


# ---------------------------------------------------------------- offline: one-line errors


def _one_line(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sfsd: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("argv,fragments", [
    (["compress", "--calib-source", "paper-mix", "--beta", "0.5", "--out", "OUT"],
     ("paper-mix needs the Hugging Face hub", "--calib-source mix")),
    (["compress", "--calib-source", "wikitext2", "--beta", "0.5", "--out", "OUT"], ("--calib-source wiki",)),
    (["compress", "--calib-source", "c4", "--beta", "0.5", "--out", "OUT"], ("--calib-source wiki",)),
    (["ppl", "--dataset", "wikitext2", "--seq-len", "2048"], ("needs the Hugging Face hub", "--dataset wiki")),
    (["ppl", "--dataset", "ptb"], ("--dataset wiki",)),
    (["ppl", "--dataset", "c4"], ("--dataset wiki",)),
    (["search", "--metric", "task", "--suite", "paper", "--task", "piqa"], ("--suite offline",)),
])
def test_offline_hub_sources_fail_in_one_line(monkeypatch, tmp_path, capsys, argv, fragments):
    monkeypatch.delenv(hub.DATASETS_DIR_ENV, raising=False)
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    _one_line(main(argv), capsys.readouterr().err, *fragments)
    assert not (tmp_path / "out").exists()


def test_library_calls_fail_in_one_line_offline(monkeypatch, tokenizer):
    monkeypatch.delenv(hub.DATASETS_DIR_ENV, raising=False)
    with pytest.raises(SfsdError) as info:
        calibration_tokens(tokenizer, "paper-mix", 4, 8)
    assert "--calib-source mix" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- leak refusal


MIX = {"calibration": {"source": "mix"}}


@pytest.mark.parametrize("record,target", [
    (MIX, ("--suite paper boolq", task_eval_rows("paper", "boolq"))),
    (MIX, ("--suite paper piqa", task_eval_rows("paper", "piqa"))),
    ({"calibration": {"source": "boolq"}}, ("--suite paper boolq", task_eval_rows("paper", "boolq"))),
    ({"calibration": {"source": "piqa"}}, ("--suite paper piqa", task_eval_rows("paper", "piqa"))),
    (MIX, ("--suite offline siqa --split calib", task_eval_rows("offline", "siqa", "calib"))),
    ({"calibration": {"source": "random"}, "protocol": "search", "search": {"name": "task", "task": "piqa"}},
     ("--suite paper piqa", task_eval_rows("paper", "piqa"))),
    ({"calibration": {"source": "random"}, "protocol": "search", "search": {"name": "task", "task": "boolq"}},
     ("--suite offline boolq --split search", task_eval_rows("offline", "boolq", "search"))),
    ({"calibration": {"source": "random"}, "protocol": "search", "search": {"name": "ppl"}},
     ("sfsd ppl --dataset wiki --split search", ppl_eval_rows("wiki", "search"))),
    ({"calibration": {"source": "wiki"}}, ("sfsd ppl --dataset wiki --split calib", ppl_eval_rows("wiki", "calib"))),
    ({"calibration": {"source": "random"}, "protocol": "search"},  # an old folder: its search data is unknown
     ("--suite paper boolq", task_eval_rows("paper", "boolq"))),
])
def test_each_leak_is_refused_in_one_line(record, target):
    with pytest.raises(SfsdError) as info:
        check_no_leak(record, [target])
    message = str(info.value)
    assert message.startswith("leak: ") and "\n" not in message and target[0] in message
    assert "evaluate" in message.split(": ")[-1] or "compress" in message.split(": ")[-1]  # the fix


@pytest.mark.parametrize("record,target", [
    (MIX, ("--suite offline boolq --split eval", task_eval_rows("offline", "boolq", "eval"))),
    (MIX, ("--suite paper hellaswag", task_eval_rows("paper", "hellaswag"))),
    (MIX, ("sfsd ppl", ppl_eval_rows("wiki", "eval"))),
    ({"calibration": {"source": "paper-mix"}}, ("--suite paper boolq", task_eval_rows("paper", "boolq"))),
    ({"calibration": {"source": "paper-mix"}, "protocol": "search",
      "search": {"name": "task", "task": "boolq", "suite": "paper"}},
     ("--suite paper boolq", task_eval_rows("paper", "boolq"))),
    ({"calibration": {"source": "wikitext2"}}, ("ppl wikitext2", ppl_eval_rows("wikitext2", "test"))),
    ({"calibration": {"source": "c4"}}, ("ppl c4", ppl_eval_rows("c4", "validation"))),
    ({"calibration": {"source": "random"}}, ("--suite paper piqa", task_eval_rows("paper", "piqa"))),
    (None, ("--suite paper piqa", task_eval_rows("paper", "piqa"))),  # an original model
])
def test_clean_combinations_are_accepted(record, target):
    check_no_leak(record, [target])


def test_methods_without_calibration_read_no_calibration_rows():
    check_no_leak(MIX, [("--suite paper boolq", task_eval_rows("paper", "boolq"))], calibrated=False)


def test_row_sets_overlap_by_origin_and_part():
    assert Rows("BoolQ dev", "calib").overlaps(Rows("BoolQ dev"))
    assert not Rows("BoolQ dev", "calib").overlaps(Rows("BoolQ dev", "eval"))
    assert not Rows("boolq train", "calib").overlaps(Rows("boolq train", "search"))
    assert calibration_rows("random") == [] and search_rows({"name": "ppl"}) == [Rows("exllamav2 wiki.utf8", "search")]


@pytest.fixture(scope="module")
def mix_folder(tmp_path_factory, default_model_dir):
    """A tiny LLaMA compressed with the offline `mix` calibration (the real pack), saved."""
    from sfsd.data import ensure_pack

    ensure_pack()
    base = save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny", default_model_dir, 1)
    out = tmp_path_factory.mktemp("models") / "tiny-mix"
    assert main(["compress", "--model", str(base), "--beta", "0.5", "--calib-source", "mix", "--calib-samples", "10",
                 "--calib-seq-len", "16", "--out", str(out), "--overwrite"]) == 0
    return out


def test_cli_refuses_paper_eval_of_a_mix_calibrated_model(mix_folder, capsys):
    capsys.readouterr()
    for task in ("boolq", "piqa"):
        code = main(["eval", str(mix_folder), "--suite", "paper", "--tasks", task])
        _one_line(code, capsys.readouterr().err, "leak: ", "--calib-source mix", f"--suite paper {task}",
                  "--calib-source paper-mix")
    code = main(["eval", str(mix_folder), "--suite", "paper"])  # the whole suite holds boolq and piqa
    _one_line(code, capsys.readouterr().err, "leak: ")
    code = main(["eval", str(mix_folder), "--tasks", "piqa", "--split", "calib"])
    _one_line(code, capsys.readouterr().err, "leak: ", "--split eval")
    # accepted: hellaswag shares no rows with the pack (it then stops on the hub, offline here)
    code = main(["eval", str(mix_folder), "--suite", "paper", "--tasks", "hellaswag"])
    err = capsys.readouterr().err
    _one_line(code, err, "--suite offline")
    assert "leak" not in err


@pytest.mark.slow
def test_paper_suite_runs_lm_evals_own_tasks_on_local_copies(local_hub, mix_folder, capsys):
    """lm-eval's own YAMLs (prompts, processing functions, metrics) over the local evaluation splits."""
    from sfsd.evaluate import evaluate_tasks
    from sfsd.models import load_model

    model, tokenizer = load_model(str(mix_folder), "cpu")
    clean = ["hellaswag", "winogrande", "arc_easy", "arc_challenge"]
    summary = evaluate_tasks(model, tokenizer, tasks=clean, suite="paper", use_cache=False).summary
    assert list(summary["task"]) == clean
    assert list(summary["n"]) == [10 + PAPER_TASK_NAMES.index(t) for t in clean]  # every local row, no more
    capsys.readouterr()
    assert main(["eval", str(mix_folder), "--suite", "paper", "--tasks", "arc_easy", "--limit", "3"]) == 0
    assert "arc_easy" in capsys.readouterr().out
    code = main(["eval", str(mix_folder), "--suite", "paper", "--tasks", "piqa"])  # still a leak
    _one_line(code, capsys.readouterr().err, "leak: ")


def test_in_memory_compressed_model_is_refused_too(mix_folder):
    from sfsd.evaluate import evaluate_tasks
    from sfsd.models import load_model

    model, tokenizer = load_model(str(mix_folder), "cpu")
    with pytest.raises(SfsdError, match="leak: .*--suite paper piqa"):
        evaluate_tasks(model, tokenizer, tasks=["piqa"], suite="paper")
    with pytest.raises(SfsdError, match="leak: .*--suite offline siqa --split calib"):
        evaluate_tasks(model, tokenizer, tasks=["siqa"], split="calib", limit=2, use_cache=False)
    # mix holds no wiki text: the wiki calib split is not a leak for this model
    assert perplexity(model, tokenizer, split="calib", seq_len=16, max_tokens=64, use_cache=False)["n_windows"] == 4
    results = evaluate_tasks(model, tokenizer, tasks=["piqa"], split="eval", limit=2, use_cache=False)
    assert int(results.summary["n"].iloc[0]) == 2  # the held-out split is accepted


# ---------------------------------------------------------------- task-guided search on the paper's train rows


@pytest.mark.slow
def test_search_on_paper_train_rows_is_recorded_and_scored_as_lm_eval(local_hub, tmp_path, default_model_dir, capsys):
    from sfsd.compress import CalibrationSpec
    from sfsd.evaluate.harness import _run_lm_eval
    from sfsd.evaluate.tasks import rows_spec
    from sfsd.search import MetricSpec, SearchConfig, materialize, run_search

    assert "suite" not in SearchConfig().to_dict()["metric"]  # offline runs keep the ids they had
    tiny = save_tiny_llama(tmp_path / "tiny", default_model_dir, 1)
    config = SearchConfig(model=str(tiny),
                          metric=MetricSpec(name="task", tolerance=0.0, task="piqa", batch_size=4, suite="paper"),
                          calibration=CalibrationSpec(source="paper-mix", samples=12, seq_len=16))
    run = run_search(config, progress=False)
    assert run.config["metric"]["suite"] == "paper" and "20% of piqa's train split" in run.config["search_rows"]
    rows = paper_search_rows("piqa")
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    metrics, _ = _run_lm_eval(model, AutoTokenizer.from_pretrained(tiny), [rows_spec("paper_piqa", "search", rows)],
                              None, 4)["paper_piqa"]
    assert run.result()["base_metric"] == pytest.approx(metrics["acc,none"], abs=1e-9)
    held = run.result()["heldout"]  # the held-out check: lm-eval's own piqa on its validation split
    assert held["base"]["n"] == 10 + PAPER_TASK_NAMES.index("piqa") and held["base"]["split"] == "eval"
    out = materialize(run, tmp_path / "searched")
    record = AutoModelForCausalLM.from_pretrained(out).config.sfsd
    assert record["search"]["suite"] == "paper" and record["calibration"]["source"] == "paper-mix"
    capsys.readouterr()
    assert main(["eval", str(out), "--suite", "paper", "--tasks", "piqa,boolq"]) == 0  # no leak: evaluated
    assert "piqa" in capsys.readouterr().out
