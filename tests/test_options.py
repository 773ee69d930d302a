"""Every option is declared once (sfsd/options.py): the CLI's flags, the configs and the dashboard's commands are
generated from the declarations, so flags, help texts and defaults cannot drift apart."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from sfsd import options
from sfsd.errors import SfsdError


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        elif action.option_strings:
            yield " ".join(path), action


def _declared() -> dict[str, list[options.Option]]:
    found: dict[str, list[options.Option]] = {}
    for value in vars(options).values():
        if isinstance(value, options.Option):
            found.setdefault(value.flag, []).append(value)
    return found


def test_every_flag_of_every_command_is_a_declaration():
    """No flag is written by hand in a command: each is one of sfsd/options.py's declarations (argparse's own
    -h aside). A flag name with two meanings has two declarations, each used by one command family."""
    from sfsd.cli import build_parser

    declared = _declared()
    checked = 0
    for command, action in _actions(build_parser()):
        flag = action.option_strings[-1]
        if flag == "--help":
            continue
        text = re.sub(r" \(default: [^)]*\)$", "", action.help or "").replace("%%", "%")
        assert text in {o.help for o in declared.get(flag, [])}, f"sfsd {command} {flag} is declared by hand: {text!r}"
        checked += 1
    assert checked > 150  # every command's flags were seen (192 today)


def test_a_config_field_and_its_flag_share_one_default():
    from sfsd.cli import build_parser
    from sfsd.search import SearchConfig

    args = build_parser().parse_args(["search"])
    assert options.config_from_args(SearchConfig, args) == SearchConfig()
    assert args.search_samples == SearchConfig().metric.samples == options.SEARCH_SAMPLES.default


def test_a_config_s_own_default_is_its_flag_s_default():
    from sfsd.cli import build_parser
    from sfsd.search.frontier import FrontierConfig

    args = build_parser().parse_args(["frontier"])
    assert args.ppl_seq_lens == FrontierConfig().ppl_seq_lens == [128, 2048]
    assert options.config_from_args(FrontierConfig, args) == FrontierConfig()


def test_configs_are_built_by_keyword_only():
    from sfsd.compress import CalibrationSpec
    from sfsd.search import MetricSpec, SearchConfig
    from sfsd.search.uniform import UniformConfig

    for cls, args in ((MetricSpec, ("ppl", 0.1)), (CalibrationSpec, ("wiki", 16)), (SearchConfig, ("m",)),
                      (UniformConfig, ("m", "weight"))):
        with pytest.raises(TypeError):
            cls(*args)


@pytest.mark.parametrize("command", ["search", "uniform"])
def test_the_shown_command_line_rebuilds_the_config(command):
    """What a page shows as the terminal equivalent creates the run the page creates."""
    from sfsd.cli import build_parser
    from sfsd.cli.search import config_from_args, uniform_config_from_args
    from sfsd.compress import CalibrationSpec
    from sfsd.dashboard import jobs
    from sfsd.search import MetricSpec, SearchConfig
    from sfsd.search.uniform import UniformConfig

    calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32, seed=3)
    if command == "search":
        config = SearchConfig(method="weight", metric=MetricSpec(name="task", tolerance=0.02, task="piqa", limit=40,
                                                                 use_norm=True),
                              roles=["q", "down"], snapshot_tasks=["piqa", "boolq"], calibration=calibration,
                              dtype="bfloat16", first_block=3)
    else:
        config = UniformConfig(method="none", beta=0.33, last_blocks=24, tasks=["piqa"], limit=None,
                               ppl_seq_lens=[128, 2048], calibration=calibration)
    args = build_parser().parse_args(shlex.split(jobs.command_line(config))[1:])
    rebuilt = (config_from_args if command == "search" else uniform_config_from_args)(args)
    assert rebuilt == config and jobs.run_id_of(rebuilt) == jobs.run_id_of(config)


def test_a_bad_value_names_its_flag(capsys):
    from sfsd.cli import main

    with pytest.raises(SystemExit):
        main(["uniform", "--ppl-seq-lens", "128,long"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--ppl-seq-lens takes comma-separated whole numbers, got '128,long'" in err


def test_resume_refuses_what_it_cannot_rebuild(tmp_path, monkeypatch):
    from sfsd.runs import Run
    from sfsd.search.resume import resume_run

    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path))
    legacy = Run.create({"kind": "search", "model": "m", "method": "feature"})  # not a full SearchConfig
    with pytest.raises(SfsdError, match="does not rebuild its own id"):
        resume_run(legacy.id)
