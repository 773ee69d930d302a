"""Runs that travel: `sfsd runs export` / `import` between two caches, tampered archives, read-only mode.

The runs are the real ones of the dashboard's fixture store (conftest's `dashboard_store`: searches and uniform
runs on a tiny LLaMA).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import PAGES, ROOT, cache_env, no_exception, open_page

from sfsd.errors import SfsdError


@pytest.fixture(scope="module")
def store(dashboard_store):
    return dashboard_store


def all_runs(store: dict) -> list[str]:
    return [store["feature"], store["weight"], *store["uniform"].values()]


@pytest.fixture(scope="module")
def archive(store, tmp_path_factory) -> Path:
    """Every run of the fixture store and the feature search's saved model, in one archive."""
    from sfsd.runs.transfer import export_archive

    out = tmp_path_factory.mktemp("archive") / "runs.zip"
    with cache_env(Path(store["root"])):
        export_archive(all_runs(store), out, with_model=True)
    return out


@pytest.fixture(scope="module")
def small(store, tmp_path_factory) -> Path:
    """One uniform run (with its evaluation entries), for the tampering tests."""
    from sfsd.runs.transfer import export_archive

    out = tmp_path_factory.mktemp("small") / "one.zip"
    with cache_env(Path(store["root"])):
        export_archive([store["uniform"]["feature"]], out)
    return out


@pytest.fixture(scope="module")
def imported(archive, tmp_path_factory) -> Path:
    """A second, empty cache with the archive imported."""
    from sfsd.runs.transfer import import_archive

    root = tmp_path_factory.mktemp("second-cache")
    with cache_env(root):
        result = import_archive(archive)
    assert sorted(result.imported) == sorted(json.loads(zipfile.ZipFile(archive).read("manifest.json"))["runs"])
    return root


def written(root: Path) -> list[str]:
    """Everything under a cache root (an empty list: nothing was written)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- export --------------------------------------------------------------------------------------------


def test_archive_holds_runs_evaluations_model_and_a_manifest(archive, store):
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == "sfsd-runs" and manifest["format_version"] == 1
        assert {"sfsd", "lm_eval", "torch", "python"} <= set(manifest["versions"])
        assert manifest["host"] and manifest["created"].startswith("20")
        assert sorted(manifest["runs"]) == sorted(all_runs(store))
        members = {m["path"]: m for m in manifest["members"]}
        assert set(members) == names - {"manifest.json"}
        for name, member in members.items():
            data = zf.read(name)
            assert len(data) == member["bytes"] and hashlib.sha256(data).hexdigest() == member["sha256"]
    feature = f"runs/{store['feature']}/"
    for file in ("config.json", "status.json", "trace.jsonl", "snapshots.jsonl", "spectra.parquet", "result.json"):
        assert feature + file in names
    assert f"runs/{store['uniform']['feature']}/evaluations.jsonl" in names
    assert not any(n.endswith(("/lock", "/cancel")) or "/prefix/" in n for n in names)
    evals = [n for n in names if n.startswith("evals/")]
    assert any(n.startswith("evals/tasks/") and n.endswith("records.parquet") for n in evals)  # per-example records
    assert any(n.startswith("evals/ppl/") for n in evals)
    model = f"models/{store['feature']}/"
    assert model + "model.safetensors" in names and model + "config.json" in names
    # only the saved models of exported runs (a Table-1 run opened on Disagreement has one too)
    assert all(n.split("/")[1] in all_runs(store) for n in names if n.startswith("models/"))


def test_export_refuses_unknown_runs_and_a_model_nobody_saved(store, tmp_path):
    from sfsd.runs.transfer import export_archive

    with cache_env(Path(store["root"])):
        with pytest.raises(SfsdError, match="no run search-nope-000000000000"):
            export_archive(["search-nope-000000000000"], tmp_path / "x.zip")
        with pytest.raises(SfsdError, match="has a saved model"):
            export_archive([store["weight"]], tmp_path / "x.zip", with_model=True)
    assert written(tmp_path) == []


# ---- import ---------------------------------------------------------------------------------------------


def test_imported_runs_have_equal_frames_and_say_where_they_come_from(store, imported):
    from sfsd.evaluate.cache import EvalCache
    from sfsd.runs import RunStore, evaluations_frame, layers_frame, snapshots_frame, spectra_frame, trace_frame

    source, target = RunStore(Path(store["root"]) / "runs"), RunStore(imported / "runs")
    assert sorted(target.ids()) == sorted(all_runs(store))
    for run_id in all_runs(store):
        a, b = source.run(run_id), target.run(run_id)
        assert a.config == b.config and a.result() == b.result() and a.status() == b.status()
        for frame in (layers_frame, snapshots_frame, evaluations_frame, spectra_frame):
            pd.testing.assert_frame_equal(frame(a), frame(b))
        pd.testing.assert_frame_equal(trace_frame(a, None), trace_frame(b, None))
        origin = json.loads(b.file("imported.json").read_text())
        assert origin["computed_on"] and origin["exported_at"] and origin["imported_at"]
    listed = target.list_runs()
    assert listed["origin"].str.startswith("imported from ").all()
    assert (source.list_runs()["origin"] == "").all()
    pd.testing.assert_frame_equal(source.list_runs().drop(columns="origin"), target.list_runs().drop(columns="origin"))
    model = Path(store["saved"])
    assert {p.name: p.read_bytes() for p in model.iterdir()} == \
        {p.name: p.read_bytes() for p in (imported / "models" / model.name).iterdir()}
    entries = sorted((imported / "evals").glob("*/*/meta.json"))
    assert entries
    for meta in entries:  # the evaluation cache reads them back (checksums of the records included)
        kind, key = meta.parent.parent.name, meta.parent.name
        assert EvalCache(imported / "evals").load(kind, key) is not None


def test_import_again_says_the_runs_are_already_there(archive, imported, store):
    from sfsd.runs.transfer import import_archive

    before = {p: p.stat().st_mtime_ns for p in (imported / "runs").rglob("*")}
    with cache_env(imported):
        result = import_archive(archive)
    assert result.imported == [] and sorted(result.present) == sorted(all_runs(store)) and result.models == []
    assert all("already there" in line for line in result.lines() if "run" in line)
    assert {p: p.stat().st_mtime_ns for p in (imported / "runs").rglob("*")} == before


PAGE_RUN_KEYS = {"heatmap": "heatmap-run", "spectra": "spectra-run", "report": "report-run", "runs": "runs-detail"}


def page_content(name: str, run_id: str) -> tuple[list, list]:
    """The figures and tables a page shows for one run (widget ids and the origin caption aside)."""
    at = open_page(name)
    if name in PAGE_RUN_KEYS:
        at.selectbox(key=PAGE_RUN_KEYS[name]).select(run_id).run()
    no_exception(at)
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    tables = [frame.value.drop(columns=["origin"], errors="ignore") for frame in at.dataframe]
    return figures, tables


@pytest.mark.parametrize("name", ["runs", "heatmap", "spectra", "accuracy", "table1"])
def test_imported_runs_render_identically(store, imported, monkeypatch, name):
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    shown = {}
    for which, root in (("source", store["root"]), ("imported", str(imported))):
        monkeypatch.setenv("SFSD_CACHE_DIR", root)
        shown[which] = page_content(name, store["feature"])
    (figures_a, tables_a), (figures_b, tables_b) = shown["source"], shown["imported"]
    assert figures_a == figures_b and len(tables_a) == len(tables_b)
    assert figures_a or tables_a
    for a, b in zip(tables_a, tables_b, strict=True):
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_pages_mark_imported_runs(store, imported, monkeypatch):
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    monkeypatch.setenv("SFSD_CACHE_DIR", str(imported))
    at = open_page("heatmap")
    at.selectbox(key="heatmap-run").select(store["feature"]).run()
    captions = "\n".join(c.value for c in at.caption)
    assert "imported from " in captions
    at = open_page("runs")
    assert at.dataframe[0].value["origin"].str.startswith("imported from ").all()
    from sfsd.dashboard import data, report

    assert "imported from " in report.build_report(data.load_run(store["feature"]), data.spectra(store["feature"]))


@pytest.mark.slow  # six `sfsd` processes, each importing torch and transformers
def test_cli_moves_a_run_between_two_caches(store, tmp_path, capsys, monkeypatch):
    """The export through `python -m sfsd` (the installed entry), then the rest through the CLI's `main` in this
    process (the same parser and commands, without importing torch again for each)."""
    from sfsd.cli import main

    out = tmp_path / "moved.zip"
    env = {**os.environ, "SFSD_CACHE_DIR": store["root"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sfsd", "runs", "export", store["weight"], "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "exported 1 run(s)" in done.stdout and out.exists()

    def sfsd(*argv, cache):
        monkeypatch.setenv("SFSD_CACHE_DIR", str(cache))
        code = main(list(argv))
        return code, *capsys.readouterr()

    second = tmp_path / "second"
    code, stdout, stderr = sfsd("runs", "import", str(out), cache=second)
    assert code == 0, stderr
    assert f"imported run {store['weight']} (imported from " in stdout
    _, listed, _ = sfsd("runs", cache=second)
    assert store["weight"] in listed and "done" in listed
    _, shown, _ = sfsd("runs", "show", store["weight"], cache=second)
    assert "origin" in shown and "imported from" in shown
    code, again, _ = sfsd("runs", "import", str(out), cache=second)
    assert code == 0 and "already there with the same contents" in again
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    code, _, refused = sfsd("runs", "import", str(broken), cache=tmp_path / "third")
    assert code == 2 and refused.count("\n") == 1 and "not a zip archive" in refused


# ---- tampered archives ----------------------------------------------------------------------------------


def rebuild(source: Path, target: Path, change=None, add: dict | None = None, manifest=None,
            rename: tuple[str, str] | None = None, drop_manifest: bool = False) -> Path:
    """A copy of an archive with one member's bytes changed, members added (listed in the manifest with correct
    checksums, or not), the manifest edited or left out, or a run folder renamed everywhere."""
    with zipfile.ZipFile(source) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    listing = json.loads(members.pop("manifest.json"))
    if change:
        name = next(n for n in members if n.endswith(change[0]))
        members[name] = change[1](members[name])
    for name, (data, listed) in (add or {}).items():
        members[name] = data
        if listed:
            listing["members"].append({"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if rename:
        members = {name.replace(*rename): data for name, data in members.items()}
        listing = json.loads(json.dumps(listing).replace(*rename))
    if manifest:
        manifest(listing)
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        if not drop_manifest:
            zf.writestr("manifest.json", json.dumps(listing))
    return target


def flip_byte(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] ^ 1]) + data[11:]


def run_dir(small: Path) -> str:
    return json.loads(zipfile.ZipFile(small).read("manifest.json"))["runs"][0]


def pickle_bytes() -> bytes:
    import pickle

    return pickle.dumps({"evil": 1}, protocol=4)  # made here only to be refused: nothing ever loads it


def missing_member(listing: dict) -> None:
    listing["members"].append({"path": listing["members"][0]["path"].rsplit("/", 1)[0] + "/gone.json", "bytes": 2,
                               "sha256": hashlib.sha256(b"{}").hexdigest()})


TAMPERED = {
    "changed byte": (lambda s, t: rebuild(s, t, change=("result.json", flip_byte)), "does not match its checksum"),
    "extra file": (lambda s, t: rebuild(s, t, add={f"runs/{run_dir(s)}/notes.txt": (b"hello", False)}),
                   "is not in its manifest"),
    "dot-dot path": (lambda s, t: rebuild(s, t, add={"runs/../../evil.json": (b"{}", True)}), "leaves its folder"),
    "absolute path": (lambda s, t: rebuild(s, t, add={"/tmp/evil.json": (b"{}", True)}), "absolute path"),
    "pickle file": (lambda s, t: rebuild(s, t, add={f"runs/{run_dir(s)}/model.pkl": (pickle_bytes(), True)}),
                    "pickle"),
    "pickle bytes in a text file": (
        lambda s, t: rebuild(s, t, add={f"runs/{run_dir(s)}/notes.txt": (pickle_bytes(), True)}), "pickle data"),
    "unexpected file type": (lambda s, t: rebuild(s, t, add={f"runs/{run_dir(s)}/run.sh": (b"rm -rf ~", True)}),
                             "file type"),
    "outside the layout": (lambda s, t: rebuild(s, t, add={"elsewhere/a.json": (b"{}", True)}),
                           "not where an archive"),
    "unknown format version": (
        lambda s, t: rebuild(s, t, manifest=lambda m: m.update(format_version=99)), "format version 99"),
    "no manifest": (lambda s, t: rebuild(s, t, drop_manifest=True), "has no manifest.json"),
    "member missing": (lambda s, t: rebuild(s, t, manifest=missing_member), "is missing"),
    "run folder of another id": (lambda s, t: rebuild(s, t, rename=(run_dir(s), "uniform-x-000000000000")),
                                 "does not hold the config of that run"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_archives_are_refused_with_nothing_written(small, tmp_path, case):
    from sfsd.runs.transfer import import_archive

    make, message = TAMPERED[case]
    bad = make(small, tmp_path / "bad.zip")
    cache = tmp_path / "cache"
    cache.mkdir()
    with cache_env(cache), pytest.raises(SfsdError, match=message) as refused:
        import_archive(bad)
    assert "\n" not in str(refused.value)
    assert written(cache) == []


def test_a_raw_byte_flipped_in_the_zip_is_refused(small, tmp_path):
    from sfsd.runs.transfer import import_archive

    data = bytearray(small.read_bytes())
    with zipfile.ZipFile(small) as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("config.json")))
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 5  # inside its data
    data[offset] ^= 0xFF
    bad = tmp_path / "flipped.zip"
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    cache.mkdir()
    with cache_env(cache), pytest.raises(SfsdError, match="damaged|checksum|not valid JSON"):
        import_archive(bad)
    assert written(cache) == []


def test_oversized_members_and_archives_are_refused(small, tmp_path, monkeypatch):
    from sfsd.runs import transfer

    cache = tmp_path / "cache"
    cache.mkdir()
    biggest = max(m["bytes"] for m in json.loads(zipfile.ZipFile(small).read("manifest.json"))["members"])
    monkeypatch.setattr(transfer, "MAX_MEMBER_BYTES", biggest - 1)
    with cache_env(cache), pytest.raises(SfsdError, match="per-file limit"):
        transfer.import_archive(small)
    monkeypatch.setattr(transfer, "MAX_MEMBER_BYTES", 1 << 30)
    monkeypatch.setattr(transfer, "MAX_TOTAL_BYTES", biggest)
    with cache_env(cache), pytest.raises(SfsdError, match="limit"):
        transfer.import_archive(small)
    # a member whose bytes unpack to more than its manifest says (a zip bomb's trick)
    bomb = rebuild(small, tmp_path / "bomb.zip", change=("result.json", lambda d: d + b" " * 100_000))
    monkeypatch.setattr(transfer, "MAX_TOTAL_BYTES", 1 << 30)
    with cache_env(cache), pytest.raises(SfsdError, match="checksum|size"):
        transfer.import_archive(bomb)
    assert written(cache) == []


def test_a_run_that_exists_with_other_contents_is_refused(small, store, tmp_path):
    from sfsd.runs.transfer import import_archive

    cache = tmp_path / "cache"
    run_id = run_dir(small)
    with cache_env(cache):
        import_archive(small)
        result = cache / "runs" / run_id / "result.json"
        result.write_text(result.read_text().replace("}", ', "edited": true}', 1))
        before = written(cache)
        with pytest.raises(SfsdError, match=f"run {run_id} already exists here with different contents"):
            import_archive(small)
    assert written(cache) == before


# ---- read-only mode -------------------------------------------------------------------------------------


def test_read_only_refuses_launch_cancel_delete_save_and_import(store, small, tmp_path, monkeypatch):
    from sfsd.dashboard import jobs
    from sfsd.runs import Run, cancel, launch
    from sfsd.runs.transfer import import_archive

    cache = tmp_path / "cache"
    monkeypatch.setenv("SFSD_CACHE_DIR", str(cache))
    run = Run.create({"kind": "search", "model": store["model"], "method": "feature"})
    monkeypatch.setenv("SFSD_READONLY", "1")
    config = jobs.demo_configs(store["model"], 3)[0]
    argv = jobs.resume_argv(run.id)
    calls = [lambda: jobs.start(config), lambda: jobs.start_all([config]), lambda: jobs.spawn(argv),
             lambda: jobs.resume(run.id), lambda: jobs.start_snapshot_eval(run.id, ["piqa"], 5),
             lambda: launch(run, argv), lambda: cancel(run.id), lambda: jobs.cancel_run(run.id),
             lambda: jobs.delete_run(run.id), lambda: jobs.materialize_run(run.id),
             lambda: import_archive(small)]
    for call in calls:
        with pytest.raises(SfsdError, match="read-only mode"):
            call()
    assert Run.open(run.id).status()["state"] == "pending" and Run.open(run.id).status()["pid"] is None
    assert [p.name for p in (cache / "runs").iterdir()] == [run.id]
    assert not (cache / "logs").exists()


READONLY_FORBIDDEN = ("start", "demo", "cancel", "stop", "resume", "delete", "save", "run ", "import", "compare",
                      "score")


@pytest.mark.parametrize("name", [None, *PAGES])
def test_read_only_pages_show_no_action_and_no_local_path(store, monkeypatch, name):
    monkeypatch.setenv("SFSD_CACHE_DIR", store["root"])
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    monkeypatch.setenv("SFSD_READONLY", "1")
    at = open_page(name)
    if name == "runs":
        at.selectbox(key="runs-detail").select(store["feature"]).run()
    no_exception(at)
    labels = [button.label.lower() for button in at.button]
    assert not [label for label in labels if label.startswith(READONLY_FORBIDDEN)], labels
    assert not at.get("file_uploader")
    shown = "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "warning", "success", "code", "title",
                                                 "subheader", "json", "text") for e in getattr(at, kind, []))
    shown += "\n".join(frame.value.to_csv() for frame in at.dataframe)
    assert store["root"] not in shown and str(Path(store["model"]).parent) not in shown
    if name is None:
        assert "Read-only presenting mode" in shown
