"""Every option of sfsd, declared once: its flag, help text, default and dashboard label.

A run's config is a dataclass whose fields are options (`SearchConfig`, `MetricSpec`, `CalibrationSpec`,
`UniformConfig`, `FrontierConfig`); options that are not part of a run's identity (where the model is placed, how
many documents a one-off evaluation reads, ...) are declared here too. The CLI's flags (`add_flags`,
`add_config_flags`), the configs built from parsed flags (`config_from_args`), the dashboard's form widgets
(`sfsd.dashboard.widgets.option_input`) and the equivalent command line a page shows (`command_line`) are all
generated from these declarations, so a flag, its help and its default cannot drift apart.

This module imports nothing of sfsd but the registry (choices that come from a registry are looked up by kind
when asked for), so every layer can declare its config fields with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from sfsd.registry import names_of

# kinds of value: how a flag's text is parsed and how a value is written back
SCALARS = {"str": str, "int": int, "float": float}
LISTS = {"strs": str, "ints": int, "floats": float}  # comma-separated on the command line


@dataclass(frozen=True)
class Option:
    """One option: `--flag VALUE` on the command line, a field of a config, a widget of a form."""

    flag: str
    help: str
    default: Any = None
    kind: str = "str"  # str, int, float, bool (a switch), strs, ints, floats (comma-separated lists)
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    label: str | None = None  # the dashboard's label (default: the help's first clause)
    # the flag's text for None where None is not the default (e.g. --limit 0: every document)
    none_text: str | None = None
    # what the engine uses when the option is not given, for options whose config field stays None then (so that
    # the runs made before the option existed keep their ids)
    unset: Any = None
    # False: argparse does not refuse other values; the engine does, with its own one-line error
    argparse_choices: bool = True
    required: bool = False  # a flag the command cannot run without (an output path)
    short: str | None = None  # a one-letter alias, e.g. -v

    def __post_init__(self):
        if self.kind == "bool" and self.default is None:
            object.__setattr__(self, "default", False)  # a switch is off unless given

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def choice_list(self) -> list[str] | None:
        choices = self.choices() if callable(self.choices) else self.choices
        return None if choices is None else list(choices)

    def with_choices(self, choices: Sequence[str]) -> Option:
        """This option with the choices its owner module holds (a module that imports this one, e.g. the bundled
        models of sfsd.models): the list stays in one place and no import cycle is made."""
        return dataclasses.replace(self, choices=tuple(choices))

    def form_label(self) -> str:
        return self.label or self.help.split(";")[0].split(" (")[0]

    def field(self, default: Any = MISSING) -> Any:
        """A dataclass field with this option's default (or `default`), carrying the option as metadata."""
        value = self.default if default is MISSING else default
        metadata = {"option": self}
        if isinstance(value, (list, dict)):
            return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
        return dataclasses.field(default=value, metadata=metadata)

    def parse(self, text: str) -> Any:
        """A flag's text as a value; a bad number names the flag."""
        if self.none_text is not None and text == self.none_text:
            return None
        try:
            if self.kind in LISTS:
                return [LISTS[self.kind](t.strip()) for t in text.split(",") if t.strip()]
            return SCALARS[self.kind](text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{self.flag} takes {_kind_text(self.kind)}, got {text!r}") from exc

    def format(self, value: Any) -> list[str]:
        """The command-line words that set this option to `value` (none for an unset switch or None)."""
        if value is None and self.none_text is not None:
            return [self.flag, self.none_text]
        if value is None or value is False:
            return []
        if self.kind == "bool":
            return [self.flag]
        if self.kind in LISTS:
            return [self.flag, ",".join(_number_text(v) for v in value)]
        return [self.flag, _number_text(value)]

    def add_to(self, parser: argparse._ActionsContainer, default: Any = MISSING) -> None:
        value = self.default if default is MISSING else default
        shown = _default_text(self, value)
        help_text = self.help + (f" (default: {shown})" if shown else "")
        help_text = help_text.replace("%", "%%")
        flags = [self.short, self.flag] if self.short else [self.flag]
        if self.kind == "bool":
            parser.add_argument(*flags, dest=self.dest, action="store_true", help=help_text)
            return
        choices = self.choice_list()
        parser.add_argument(*flags, dest=self.dest, default=value, type=self.parse, help=help_text,
                            metavar=_metavar(self, choices), required=self.required,
                            **({"choices": choices} if choices and self.kind == "str" and self.argparse_choices
                               else {}))


def _number_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind_text(kind: str) -> str:
    return {"int": "a whole number", "float": "a number", "ints": "comma-separated whole numbers",
            "floats": "comma-separated numbers"}.get(kind, "text")


def _metavar(option: Option, choices: list[str] | None) -> str | None:
    if choices and option.kind == "str":
        return "{" + ",".join(choices) + "}"
    return {"int": "N", "float": "X", "ints": "N,N", "floats": "X,X", "strs": "A,B"}.get(option.kind)


def _default_text(option: Option, value: Any) -> str:
    if value is None and option.unset is not None:
        value = option.unset
    if value is None or option.kind == "bool":
        return ""
    if option.kind in LISTS:
        return ",".join(_number_text(v) for v in value)
    return _number_text(value)


def add_flags(parser: argparse._ActionsContainer, *options: Option, **defaults: Any) -> None:
    """Add each option's flag; `defaults` (by dest) overrides a declared default for this command only."""
    for opt in options:
        opt.add_to(parser, defaults.get(opt.dest, MISSING))


# ---- configs whose fields are options -------------------------------------------------------------------


def config_options(cls: type, prefix: str = "") -> list[tuple[str, Option, Any]]:
    """(field path, option, the field's default) of every option field of config class `cls`, nested configs
    flattened ("metric.samples"); a nested config is a field whose metadata names its class under "config"."""
    found = []
    for f in dataclasses.fields(cls):
        if "config" in f.metadata:
            found += config_options(f.metadata["config"], f"{prefix}{f.name}.")
        elif "option" in f.metadata:
            found.append((prefix + f.name, f.metadata["option"], _field_default(f)))
    return found


def nested(cls: type) -> Any:
    """A field holding a nested config (its defaults by default), flattened into its parent's flags."""
    return dataclasses.field(default_factory=cls, metadata={"config": cls})


def add_config_flags(parser: argparse._ActionsContainer, cls: type, *, only: Iterable[str] | None = None,
                     exclude: Iterable[str] = (), **defaults: Any) -> None:
    """The flags of config class `cls` (field paths in `only`, all but `exclude`), each with its field's default
    (a config may give an option its own, as the frontier's two perplexity lengths); `defaults` by dest."""
    wanted = None if only is None else set(only)
    for path, opt, default in config_options(cls):
        if (wanted is None or path in wanted) and path not in set(exclude):
            opt.add_to(parser, defaults.get(opt.dest, default))


def config_from_args(cls: type, args: argparse.Namespace, **fields: Any) -> Any:
    """The config `cls` of parsed flags, built by keyword: a field whose flag the command does not take keeps
    its declared default; `fields` (by field name) are set as given."""
    values = dict(fields)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        if "config" in f.metadata:
            values[f.name] = config_from_args(f.metadata["config"], args)
        elif "option" in f.metadata and hasattr(args, f.metadata["option"].dest):
            values[f.name] = getattr(args, f.metadata["option"].dest)
    return cls(**values)


def config_argv(config: Any) -> list[str]:
    """The flags that give `config` from its class's defaults (an option at its default is left out)."""
    words: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "config" in f.metadata:
            words += config_argv(value)
        elif "option" in f.metadata and value != _field_default(f):
            words += f.metadata["option"].format(value)
    return words


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def command_line(command: Sequence[str], config: Any = None, extra: Sequence[str] = ()) -> str:
    """`sfsd COMMAND [flags]`: what a page shows as the terminal equivalent of what it starts."""
    return shlex.join(["sfsd", *command, *(config_argv(config) if config is not None else []), *extra])


# ---- the options ------------------------------------------------------------------------------------------


def _methods() -> list[str]:  # what a search can use: the methods with a per-layer rank
    return names_of("method", where=lambda method: not method.structured)


def _all_methods() -> list[str]:
    return names_of("method")


def _whole_model_methods() -> list[str]:
    return names_of("method", where=lambda method: method.whole_model)


def _uniform_methods() -> list[str]:
    return [*names_of("method"), "none"]


def _metrics() -> list[str]:
    return names_of("metric")


# The model and where it runs
MODEL = Option("--model", "short name of a bundled model, local folder or hub id", "smollm2-135m", label="Model")
DEVICE = Option("--device", "cpu, cuda or cuda:N; cuda if available when not given", label="Device")
DTYPE = Option("--dtype", "auto, float32, bfloat16 or float16; auto = the checkpoint's dtype on CUDA, float32 on CPU",
               "auto", choices=("auto", "float32", "bfloat16", "float16"), label="Dtype",
               argparse_choices=False)  # parse_dtype's error names the choices and says what to do
DEVICE_MAP = Option("--device-map", "spread the model over the GPUs, the CPU and disk with accelerate",
                    choices=("auto", "sequential", "balanced"))
MAX_MEMORY = Option("--max-memory", "with --device-map: memory per device, e.g. 0=20GiB,cpu=60GiB")
OFFLOAD_DIR = Option("--offload-dir", "with --device-map: folder for the weights put on disk")
PLACEMENT = (DEVICE, DEVICE_MAP, MAX_MEMORY, OFFLOAD_DIR)

# What to compress and how
METHOD = Option("--method", "decomposition method", "feature", choices=_methods, label="Method",
                argparse_choices=False)  # the config's error says where a pruning method goes instead
BETA = Option("--beta", "per-layer parameter budget in (0, 1] (Eq. 3)", 0.46, "float",
              label="beta (share of each layer's parameters)")
UNIFORM_METHOD = Option("--method", "decomposition or pruning method, or none: the base model", "feature",
                        choices=_uniform_methods, label="Method")
COMPRESS_METHOD = Option("--method", "decomposition method, or llm-pruner (structured pruning; without "
                         "--last-blocks it prunes LLM-Pruner's own block range), or slicegpt (the whole model, at "
                         "--slicing or at the parameters of --beta on the --last-blocks)", "feature",
                         choices=_all_methods, label="Method")
SLICING = Option("--slicing", "slicegpt only: share of the residual width removed, in [0, 1) (SliceGPT's "
                 "--sparsity; the width is rounded down to a multiple of 8)", None, "float", label="Slicing")
LAST_BLOCKS = Option("--last-blocks", "compress the last N blocks", 12, "int", label="Last N blocks")
# How a rank-r layer is stored, and so how its parameters count against a budget (sfsd.decompose.budget)
FACTOR_FORMATS = ("two-factor", "compact")
FACTORS = Option("--factors", "how each thin layer is stored and counted: two-factor (the paper's: r (d1 + d2) "
                 "weights) or compact (r pivot columns of the first factor fixed to the identity: r (d1 + d2 - r) "
                 "weights, so a higher rank at the same beta)", FACTOR_FORMATS[0], choices=FACTOR_FORMATS,
                 label="Factor format")

CALIBRATION_STREAMS = ("open-loop", "closed-loop", "anchored")
OPEN_LOOP = CALIBRATION_STREAMS[0]  # the default: the paper's statistics, on the original model
CALIBRATION_STREAM = Option(
    "--calibration-stream", "whose activations each block's statistics come from: open-loop (the original model's), "
    "closed-loop (the model with every earlier block, and the block's earlier layers, already compressed: the inputs "
    "each layer will see) or anchored (closed-loop inputs, each layer fit to the original model's outputs: an "
    "error-correcting reduced-rank regression, feature method only); needs the ranks before decomposing: compress "
    "--beta/--ranks, uniform, or a target-budget search (and the frontier), whose ranks are allocated on open-loop "
    "trials and whose final model is built with this stream; Algorithm 1 searches open loop",
    CALIBRATION_STREAMS[0], choices=CALIBRATION_STREAMS,
    label="Calibration stream")

# Calibration (CalibrationSpec)
CALIB_SOURCE = Option("--calib-source", "calibration text: offline mix (an equal share of each pack task), wiki, a "
                      "task name, random; with the hub: paper-mix (the six paper tasks' train splits), wikitext2, c4",
                      "mix", label="Calibration source")
CALIB_SAMPLES = Option("--calib-samples", "calibration sequences", 512, "int", label="Calibration samples")
CALIB_SEQ_LEN = Option("--calib-seq-len", "tokens per calibration sequence", 128, "int",
                       label="Calibration tokens per sample")
SEED = Option("--seed", "seed of the calibration sample", 0, "int", label="Seed")
# one meaning wherever it is taken: how many sequences (calibration sequences, lm-eval requests, perplexity
# windows, StereoSet sentences) go through the model in one forward pass; searches set theirs in MetricSpec
BATCH_SIZE = Option("--batch-size", "sequences per forward pass", 16, "int")

# The search's metric (MetricSpec)
METRIC = Option("--metric", "what the search keeps: ppl (perplexity on wiki search windows) or task (accuracy on a "
                "task's search split)", "ppl", choices=_metrics, label="Metric")
TOLERANCE = Option("--tolerance", "ppl: relative increase allowed (0.05 = within 5%); task: accuracy drop allowed "
                   "(0.05 = 5 points)", 0.05, "float", label="Tolerance")
COMPOUNDING = Option("--compounding", "threshold from the last accepted value instead of the base model's",
                     kind="bool", label="Compounding threshold")
SEARCH_TASK = Option("--task", "task metric: offline task (boolq, piqa, openbookqa, commonsenseqa, siqa) or, with "
                     "--suite paper, boolq, piqa, hellaswag, arc_easy, arc_challenge", label="Task")
ACC_NORM = Option("--acc-norm", "task metric: use length-normalised accuracy", kind="bool", label="acc_norm")
SEARCH_LIMIT = Option("--search-limit", "task metric: first N documents of the search split; all when not given",
                      kind="int", label="Search documents (0 = all)")
SEARCH_SAMPLES = Option("--search-samples", "ppl metric: windows of wiki search text; 32 x 128 = 4,096 tokens keep a "
                        "+5% search near +5% on unseen text, fewer over-fit the search text", 32, "int",
                        label="Search windows")
SEARCH_SEQ_LEN = Option("--search-seq-len", "ppl metric: tokens per search window", 128, "int",
                        label="Tokens per window")
SEARCH_BATCH_SIZE = Option("--search-batch-size", "ppl metric: search windows per forward pass", 8, "int")
SUITE = Option("--suite", "task suite: offline (the pack's tasks and splits) or paper (lm-eval's hub tasks; a task "
               "metric searches a seeded 20% of their train split, never evaluated)", "offline",
               choices=("offline", "paper"))

# The search (SearchConfig)
STRATEGY = Option("--strategy", "per-layer walk: linear (the paper) or bisect; with --target-budget an allocation: "
                  "uniform, spectrum (default), sensitivity, refined or alg1", label="Strategy")
TARGET_BUDGET = Option("--target-budget", "overall budget B in (0, 1] to reach (within 0.5%) with an allocation "
                       "--strategy", kind="float", label="Target budget")
ALG1_BISECTIONS = Option("--alg1-bisections", "alg1: bisections of the tolerance after growing it; fewer Algorithm "
                         "1 runs, a coarser tolerance, the same landing at B", kind="int", unset=5)
ALG1_GROWTH = Option("--alg1-growth", "alg1: factor the tolerance grows by until a run reaches B", kind="float",
                     unset=2.0)
ENGINE = Option("--engine", "fast (prefix cache) or reference (the full model per trial)", "fast",
                choices=("fast", "reference"))
FIRST_BLOCK = Option("--first-block", "blocks below this one are never touched", 0, "int", label="First block")
ROLES = Option("--roles", "roles to search; all when not given", kind="strs", label="Roles (none = all)")
SNAPSHOT_EVERY = Option("--snapshot-every", "decided layers between snapshots (and one at the end)", 10, "int",
                        label="Snapshot every (layers)")
SNAPSHOT_TASKS = Option("--snapshot-tasks", "offline tasks evaluated on the eval split at each snapshot", [], "strs",
                        label="Tasks evaluated at each snapshot")
SNAPSHOT_LIMIT = Option("--snapshot-limit", "documents per snapshot task", 100, "int",
                        label="Documents per snapshot task")
STOP_AT_BUDGET = Option("--stop-at-budget", "Algorithm 1 walk: stop (resumably) once the overall budget is at or "
                        "below this; the decisions so far are the finished run's (not part of the run's id)",
                        kind="float")

# Evaluation on the eval split (uniform runs, the frontier, snapshot-eval, sfsd eval)
TASKS = Option("--tasks", "tasks to evaluate (runs: offline tasks, on the eval split)", [], "strs",
               label="Tasks (eval split)")
LIMIT = Option("--limit", "documents (examples) per evaluated task: the first N of the split; 0: all", 100, "int",
               label="Documents per task", none_text="0")
PPL_SEQ_LENS = Option("--ppl-seq-lens", "perplexity window lengths in tokens", [128], "ints",
                      label="Perplexity window (tokens)")
PPL_TOKENS = Option("--ppl-tokens", "first tokens of the wiki eval split scored by the perplexity", 16384, "int")

# The frontier (FrontierConfig)
STRATEGIES = Option("--strategies", "allocation strategies", ["uniform", "spectrum", "sensitivity", "alg1"], "strs")
BUDGETS = Option("--budgets", "overall budgets", [0.9, 0.8, 0.6], "floats")
BASELINES = Option("--baselines", "whole-model methods run beside the strategies at every budget, at the parameters of "
                   "Eq. 3's thin layers at beta = budget on every block (a uniform run each): slicegpt", [], "strs",
                   choices=_whole_model_methods, label="Baselines")

QUIET = Option("--quiet", "no progress bars", kind="bool")
VERBOSE = Option("--verbose", "log progress details", kind="bool", short="-v")


# ---- options of one command family (evaluation, saving, inspecting); same flag, same meaning within a family ----

# Saving a model or an archive
OUT_FOLDER = Option("--out", "output folder (Hugging Face format)", required=True)
OUT_ARCHIVE = Option("--out", "the archive to write, e.g. runs.zip", required=True)
OVERWRITE = Option("--overwrite", "replace --out if it exists", kind="bool")
RANKS = Option("--ranks", "per-layer ranks instead of --beta: a JSON file {module name: rank}, or a finished run's id "
               "(its allocation)")
WITH_MODEL = Option("--with-model", "also the runs' saved models (cache/models/RUN_ID, from `sfsd materialize`)",
                    kind="bool")
PREPARE_MODEL = Option("--model", "bundled model to convert", MODEL.default)  # choices: sfsd.models.BUNDLED
FORCE_PACK = Option("--force", "rebuild the pack even if it is present", kind="bool")

# Inspecting (sfsd info, runs show, data show, snapshot-eval)
MAC_SEQ_LEN = Option("--seq-len", "sequence length for the MAC count", 128, "int")
LAYER_TABLE = Option("--layers", "print the per-layer table", kind="bool")
SHOW_LAYERS = Option("--rows", "layers to print (0: all)", 20, "int")
SHOW_SPLIT = Option("--split", "pack split to print: calib, search, eval or all", "eval")
SHOW_ROWS = Option("--n", "number of rows to print", 3, "int")
SNAPSHOT_STEPS = Option("--steps", "steps to evaluate; every snapshot of the run when not given", kind="ints")

# One-off evaluations (sfsd eval, ppl, bias, disagree)
PACK_SPLITS = ("calib", "search", "eval")
EVAL_SPLIT = Option("--split", "part of the offline pack: calib, search or eval (sfsd ppl: of the wiki text only)",
                    "eval", choices=PACK_SPLITS)
BIAS_SPLIT = Option("--split", "StereoSet rows: all (the whole set, as the official evaluation), or the pack's search "
                    "(20%) / eval (80%) part", "all", choices=("all", "search", "eval"))
PPL_DATASET = Option("--dataset", "wiki: the offline pack's text; wikitext2 (test), ptb (test), c4 (validation, 2000 "
                     "documents): from the hub, joined and windowed as SVD-LLM/SliceGPT", "wiki",
                     choices=("wiki", "wikitext2", "ptb", "c4"))
PPL_SEQ_LEN = Option("--seq-len", "window length in tokens", 128, "int")
MAX_TOKENS = Option("--max-tokens", "use only the first N tokens of the text", kind="int")
MODEL_KEY = Option("--model-key", "name for the weights in the cache key; a sha256 fingerprint of the weights when "
                   "not given")
NO_CACHE = Option("--no-cache", "recompute even if a stored result exists", kind="bool")
PREDICTION = Option("--metric", "which prediction to compare: acc or acc_norm", "acc", choices=("acc", "acc_norm"))
SHOW_FLIPS = Option("--show", "flipped examples to print per task", 5, "int")

# A random model of a published shape (sfsd synth)
SYNTH_ARCH = Option("--arch", "architecture", "llama")  # choices: sfsd.synth.SYNTH_ARCHS
HIDDEN = Option("--hidden", "hidden size", kind="int", required=True)
INTERMEDIATE = Option("--intermediate", "MLP intermediate size", kind="int", required=True)
HEADS = Option("--heads", "attention heads", kind="int", required=True)
KV_HEADS = Option("--kv-heads", "key/value heads; --heads when not given", kind="int")
BLOCKS = Option("--blocks", "decoder blocks", kind="int", required=True)
WEIGHT_DTYPE = Option("--dtype", "weight dtype: float32, bfloat16 or float16", "float32")
WEIGHT_SEED = Option("--seed", "weight seed", 0, "int")
