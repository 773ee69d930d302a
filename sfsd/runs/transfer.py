"""Runs that travel: export runs into one zip archive, import such an archive into this machine's cache.

Archive layout (format 1):
    manifest.json             format, format_version, created (UTC), host, versions (`sfsd.cache.versions`),
                              runs, with_model, members [{path, bytes, sha256}]: every other member, exactly
    runs/<run id>/<file>      the run folder (config, status, trace, snapshots, spectra, result, evaluations, log;
                              imported.json of a run that was itself imported)
    evals/<kind>/<key>/<file> the run's evaluation-cache entries (summaries and per-example records)
    models/<run id>/<file>    with `with_model`: the run's materialized model folder (safetensors, config, tokenizer)

An import checks the whole archive before it writes anything: the manifest and its format version, the layout
and type of every member (JSON, JSON lines, Parquet, safetensors and text only; no pickle by name or by magic
bytes), sizes, checksums, and that each run folder is the run its config names. A run id already present with
other contents refuses the import. Each run, model and evaluation entry then appears atomically (temporary
folder + rename), with `imported.json` recording where and when the run was computed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sfsd.atomic import atomic_dir, atomic_file, write_json
from sfsd.cache import file_sha256, versions
from sfsd.errors import SfsdError
from sfsd.paths import cache_dir, models_dir, runs_dir
from sfsd.runs._files import disk_guard, timestamp
from sfsd.runs.ids import FORMAT_VERSION, is_run_id, run_id_for
from sfsd.runs.readonly import require_writable
from sfsd.runs.run import CANCEL, CONFIG, IMPORTED, LOCK, Run, decided_ranks

ARCHIVE_FORMAT = "sfsd-runs"
ARCHIVE_VERSION = 1
MANIFEST = "manifest.json"
# The only file types an archive may carry (what the run store, the evaluation cache and a saved model write).
ALLOWED_SUFFIXES = (".json", ".jsonl", ".parquet", ".safetensors", ".txt", ".md", ".csv", ".jinja")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz")
EVAL_KINDS = ("tasks", "ppl", "stereoset")
EVAL_FILES = ("meta.json", "records.parquet")
MAX_MEMBER_BYTES = 4 << 30  # a 1B-parameter fp32 safetensors file
MAX_TOTAL_BYTES = 16 << 30
MAX_MEMBERS = 20_000
MAX_MANIFEST_BYTES = 64 << 20
_CHUNK = 1 << 20
_EXPORT_AGAIN = "export it again with `sfsd runs export`"
_KEY = re.compile(r"^[0-9a-f]{8,64}$")


# ---- export ---------------------------------------------------------------------------------------------


def export_archive(run_ids: Iterable[str], out: str | Path | IO[bytes], with_model: bool = False) -> dict:
    """Write the runs (and their evaluation entries; their saved models with `with_model`) as one zip to `out`
    (a path, written atomically, or a binary file object); return the manifest."""
    members = _export_members(list(dict.fromkeys(run_ids)), with_model)
    if isinstance(out, (str, Path)):
        with atomic_file(out, binary=True) as handle:
            return _write_zip(members, handle, with_model)
    return _write_zip(members, out, with_model)


def export_bytes(run_ids: Iterable[str], with_model: bool = False) -> bytes:
    """The archive of `export_archive` in memory (the dashboard's download)."""
    buffer = io.BytesIO()
    export_archive(run_ids, buffer, with_model)
    return buffer.getvalue()


def _export_members(run_ids: list[str], with_model: bool) -> dict[str, Path]:
    """Archive path -> file, for every run (refused: none given, unknown, still running, no saved model)."""
    if not run_ids:
        raise SfsdError("name at least one run to export: list them with `sfsd runs`")
    members: dict[str, Path] = {}
    for run_id in run_ids:
        run = Run.open(run_id)
        if run.is_active():
            raise SfsdError(f"run {run_id} is still running: wait for it or cancel it with "
                            f"`sfsd runs cancel {run_id}` before exporting it")
        for path in _run_files(run):
            members[f"runs/{run_id}/{path.name}"] = path
        for path in _eval_files(run):
            members[path.relative_to(cache_dir()).as_posix()] = path
        if with_model:
            for path in _model_files(run_id):
                members[f"models/{run_id}/{path.name}"] = path
    if with_model and not any(name.startswith("models/") for name in members):
        listed = " ".join(run_ids)
        raise SfsdError(f"none of the runs {listed} has a saved model: save one with `sfsd materialize RUN_ID --out "
                        f"cache/models/RUN_ID` (or the Runs page), or export without --with-model")
    return members


def _run_files(run: Run) -> list[Path]:
    """The run folder's files; lock, cancel, temporary files and the search's scratch folder stay behind."""
    files = []
    for path in sorted(run.path.iterdir()):
        if path.name.startswith(".") or path.name in (LOCK, CANCEL) or not path.is_file():
            continue
        _check_exportable(path, f"run {run.id}")
        files.append(path)
    return files


def _model_files(run_id: str) -> list[Path]:
    """The files of the run's saved model (none where it has none: uniform runs, unsaved searches)."""
    folder = models_dir() / run_id
    if not (folder / "config.json").is_file():
        return []
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file():
            raise SfsdError(f"the saved model of run {run_id} holds a folder {path.name}: archives carry flat "
                            f"model folders only; save the model again")
        _check_exportable(path, f"the saved model of run {run_id}")
        files.append(path)
    return files


def _check_exportable(path: Path, owner: str) -> None:
    if path.suffix.lower() not in ALLOWED_SUFFIXES:
        raise SfsdError(f"{owner} holds {path.name}, a file type archives do not carry ({path.suffix or 'none'}): "
                        f"move it out of the folder and export again")


def _eval_files(run: Run) -> list[Path]:
    """The evaluation-cache entries (meta.json, records.parquet) computed for this run's models."""
    keys = _model_keys(run)
    root = cache_dir() / "evals"
    files = []
    for kind in EVAL_KINDS:
        for meta in sorted((root / kind).glob("*/meta.json")) if (root / kind).is_dir() else []:
            if _entry_model_key(meta) in keys:
                files += [meta.parent / name for name in EVAL_FILES if (meta.parent / name).is_file()]
    return files


def _model_keys(run: Run) -> set[str]:
    """The model keys under which this run's evaluations are cached: the run id for a uniform run; for a
    search, the key of the compressed model at every evaluated step."""
    if run.config.get("kind") == "uniform":
        return {run.id}
    steps = {record.get("step") for record in run.read_snapshots() if record.get("evals")}
    steps |= {record.get("step") for record in run.read_evaluations() if record.get("step") is not None}
    if not steps - {None}:
        return set()
    from sfsd.evaluate.keys import compressed_model_key  # lazy: it loads torch

    decided = run.decisions()
    keys = set()
    for step in steps - {None}:
        keys.add(compressed_model_key(run.config, decided_ranks(decided[:int(step)])))
    return keys


def _entry_model_key(meta_path: Path) -> str | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    for node, name in ((meta.get("summary"), "model_key"), (meta.get("fields"), "model"), (meta, "model_key")):
        if isinstance(node, dict) and isinstance(node.get(name), str):
            return node[name]
    return None


def _write_zip(members: dict[str, Path], handle: IO[bytes], with_model: bool) -> dict:
    listed = []
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, path in members.items():
            size = path.stat().st_size
            info = zipfile.ZipInfo(name, date_time=datetime.fromtimestamp(path.stat().st_mtime).timetuple()[:6])
            info.compress_type = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            digest, written = hashlib.sha256(), 0
            with open(path, "rb") as source, archive.open(info, "w", force_zip64=size > (1 << 31)) as target:
                for block in iter(lambda: source.read(_CHUNK), b""):  # noqa: B023  (read inside the loop)
                    digest.update(block)
                    target.write(block)
                    written += len(block)
            listed.append({"path": name, "bytes": written, "sha256": digest.hexdigest()})
        manifest = {
            "format": ARCHIVE_FORMAT, "format_version": ARCHIVE_VERSION, "created": timestamp(),
            "host": socket.gethostname(), "versions": versions(), "with_model": with_model,
            "runs": sorted({name.split("/")[1] for name in members if name.startswith("runs/")}),
            "members": listed,
        }
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ---- import ---------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did: runs added, runs that were already there, models and evaluation entries."""

    origin: dict
    imported: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    models_present: list[str] = field(default_factory=list)
    evals_added: int = 0
    evals_present: int = 0
    evals_kept: int = 0

    def lines(self) -> list[str]:
        where = origin_line(self.origin)
        out = [f"imported run {run_id} ({where})" for run_id in self.imported]
        out += [f"run {run_id} is already there with the same contents: nothing to do" for run_id in self.present]
        out += [f"imported the saved model of run {run_id} into cache/models/{run_id}" for run_id in self.models]
        out += [f"the saved model of run {run_id} is already there" for run_id in self.models_present]
        if self.evals_added:
            out.append(f"added {self.evals_added} evaluation cache entries (summaries and per-example records)")
        if self.evals_present:
            out.append(f"{self.evals_present} evaluation cache entries were already there with the same contents")
        if self.evals_kept:
            out.append(f"kept this machine's own version of {self.evals_kept} evaluation cache entries (same key, "
                       f"other bytes: computed here too)")
        return out


@dataclass
class _Plan:
    """A checked archive: its manifest and, per destination, the members to write (name -> archive path)."""

    manifest: dict
    runs: dict[str, dict[str, str]] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    evals: dict[str, dict[str, str]] = field(default_factory=dict)  # "kind/key" -> files
    sha: dict[str, str] = field(default_factory=dict)


def import_archive(source: str | Path | IO[bytes]) -> ImportResult:
    """Check an archive of `export_archive` completely, then add its runs to this machine's cache.

    Every refusal is an SfsdError of one line, raised before anything is written."""
    require_writable("import runs")
    name = Path(str(getattr(source, "name", source))).name
    try:
        archive = zipfile.ZipFile(source)
    except FileNotFoundError as exc:
        raise SfsdError(f"archive {source} does not exist: check the path") from exc
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SfsdError(f"{name} is not a zip archive of runs: {_EXPORT_AGAIN}") from exc
    with archive:
        plan = check_archive(archive, name)
        result = ImportResult(origin=_origin(plan.manifest, name))
        new_runs = _new_items(plan.runs, plan, runs_dir(), "run", ignore={IMPORTED, LOCK, CANCEL})
        new_models = _new_items(plan.models, plan, models_dir(), "saved model of run")
        result.present = sorted(set(plan.runs) - set(new_runs))
        result.models_present = sorted(set(plan.models) - set(new_models))
        for run_id, files in new_runs.items():
            _extract(archive, plan, files, runs_dir() / run_id, run_id,
                     None if IMPORTED in files else {**result.origin, "imported_at": timestamp()})
            result.imported.append(run_id)
        for run_id, files in new_models.items():
            _extract(archive, plan, files, models_dir() / run_id, run_id)
            result.models.append(run_id)
        for entry, files in plan.evals.items():
            folder = cache_dir() / "evals" / entry
            if (folder / "meta.json").exists():  # the same key: computed or imported here before; never replaced
                same = all((folder / name).is_file() and file_sha256(folder / name) == plan.sha[path]
                           for name, path in files.items())
                result.evals_present += same
                result.evals_kept += not same
                continue
            _extract(archive, plan, files, folder, entry)
            result.evals_added += 1
    return result


def check_archive(archive: zipfile.ZipFile, name: str = "the archive") -> _Plan:
    """Every check of an import, reading the archive only: SfsdError at the first problem."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise SfsdError(f"{name} holds {len(infos)} files, more than the {MAX_MEMBERS} an archive of runs may hold")
    files: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        _check_path(info.filename)
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise SfsdError(f"{info.filename} in {name} is a symbolic link: archives of runs hold plain files only")
        if info.is_dir():
            continue
        if info.filename in files:
            raise SfsdError(f"{info.filename} appears twice in {name}: {_EXPORT_AGAIN}")
        files[info.filename] = info
    manifest = _read_manifest(archive, files, name)
    listed = {member["path"]: member for member in manifest["members"]}
    extra = sorted(set(files) - set(listed) - {MANIFEST})
    if extra:
        raise SfsdError(f"{extra[0]} in {name} is not in its manifest (changed after export?): {_EXPORT_AGAIN}")
    missing = sorted(set(listed) - set(files))
    if missing:
        raise SfsdError(f"{missing[0]}, listed in the manifest of {name}, is missing: {_EXPORT_AGAIN}")
    total = sum(member["bytes"] for member in listed.values())
    if total > MAX_TOTAL_BYTES:
        raise SfsdError(f"{name} unpacks to {total / 2**30:.1f} GiB, more than the {MAX_TOTAL_BYTES / 2**30:.0f} GiB "
                        f"limit: export fewer runs per archive")
    plan = _Plan(manifest)
    for path, member in listed.items():
        _place(plan, path)
        if member["bytes"] > MAX_MEMBER_BYTES or files[path].file_size != member["bytes"]:
            why = ("is larger than the per-file limit of " f"{MAX_MEMBER_BYTES / 2**30:.0f} GiB"
                   if member["bytes"] > MAX_MEMBER_BYTES else "does not have the size its manifest says")
            raise SfsdError(f"{path} in {name} {why}: {_EXPORT_AGAIN}")
    for path, member in listed.items():
        _check_content(archive, files[path], member, name)
        plan.sha[path] = member["sha256"]
    _check_runs(archive, plan, name)
    return plan


def _check_path(path: str) -> None:
    pure = PurePosixPath(path)
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path) or pure.is_absolute():
        raise SfsdError(f"{path} in the archive is an absolute path: refused (archives hold relative paths only)")
    if "\\" in path or any(part in ("..", ".", "") for part in path.rstrip("/").split("/")):
        raise SfsdError(f"{path} in the archive leaves its folder ('..', '.', '\\' or an empty part): refused")


def _read_manifest(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], name: str) -> dict:
    if MANIFEST not in files:
        raise SfsdError(f"{name} has no {MANIFEST}: it was not written by `sfsd runs export`; {_EXPORT_AGAIN}")
    if files[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise SfsdError(f"the {MANIFEST} of {name} is too large: {_EXPORT_AGAIN}")
    try:
        manifest = json.loads(_read_limited(archive, files[MANIFEST], MAX_MANIFEST_BYTES))
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise SfsdError(f"the {MANIFEST} of {name} is not valid JSON: {_EXPORT_AGAIN}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise SfsdError(f"the {MANIFEST} of {name} is not the manifest of an archive of runs: {_EXPORT_AGAIN}")
    version = manifest.get("format_version")
    if version != ARCHIVE_VERSION:
        raise SfsdError(f"{name} has archive format version {version!r}, which this sfsd does not know (it reads "
                        f"version {ARCHIVE_VERSION}): update sfsd, or export with this sfsd's version")
    members = manifest.get("members")
    if not isinstance(members, list) or not all(_member_ok(member) for member in members):
        raise SfsdError(f"the {MANIFEST} of {name} lists its members badly: {_EXPORT_AGAIN}")
    if len({member["path"] for member in members}) != len(members):
        raise SfsdError(f"the {MANIFEST} of {name} lists a member twice: {_EXPORT_AGAIN}")
    if not isinstance(manifest.get("host"), str) or not isinstance(manifest.get("created"), str):
        raise SfsdError(f"the {MANIFEST} of {name} does not say where and when it was exported: {_EXPORT_AGAIN}")
    return manifest


def _member_ok(member: Any) -> bool:
    return (isinstance(member, dict) and isinstance(member.get("path"), str) and isinstance(member.get("bytes"), int)
            and not isinstance(member.get("bytes"), bool) and member["bytes"] >= 0
            and isinstance(member.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", member["sha256"]) is not None)


def _place(plan: _Plan, path: str) -> None:
    """Put a member in the plan by its place in the layout; refuse anything outside it or of another type."""
    parts = path.split("/")
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise SfsdError(f"{path} in the archive is a pickle-type file ({suffix}): refused, sfsd never loads pickles")
    if suffix not in ALLOWED_SUFFIXES:
        raise SfsdError(f"{path} in the archive has a file type archives of runs do not carry "
                        f"({suffix or 'no suffix'}; allowed: {' '.join(ALLOWED_SUFFIXES)}): refused")
    if parts[0] in ("runs", "models") and len(parts) == 3 and is_run_id(parts[1]) and not parts[2].startswith("."):
        if parts[0] == "runs" and parts[2] in (LOCK, CANCEL):
            raise SfsdError(f"{path} in the archive is a lock or cancel file: refused; {_EXPORT_AGAIN}")
        target = plan.runs if parts[0] == "runs" else plan.models
        target.setdefault(parts[1], {})[parts[2]] = path
        return
    if parts[0] == "evals" and len(parts) == 4 and parts[1] in EVAL_KINDS and _KEY.match(parts[2]) \
            and parts[3] in EVAL_FILES:
        plan.evals.setdefault(f"{parts[1]}/{parts[2]}", {})[parts[3]] = path
        return
    raise SfsdError(f"{path} in the archive is not where an archive of runs keeps files (runs/<run id>/, "
                    f"models/<run id>/, evals/<kind>/<key>/): refused")


def _read_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise SfsdError(f"{info.filename} in the archive unpacks to more than its limit: refused")
    return data


def _check_content(archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: dict, name: str) -> None:
    """Checksum and size of the unpacked bytes (never more than the manifest's size is read), and the type."""
    path, expected = member["path"], member["bytes"]
    digest, size, head, tail = hashlib.sha256(), 0, b"", b""
    try:
        with archive.open(info) as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):  # noqa: B023
                size += len(block)
                if size > expected:
                    break
                digest.update(block)
                head = head or block[:64]
                tail = (tail + block)[-64:]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise SfsdError(f"{path} in {name} is damaged ({exc}): {_EXPORT_AGAIN}") from exc
    if size != expected or digest.hexdigest() != member["sha256"]:
        raise SfsdError(f"{path} in {name} does not match its checksum (changed after export?): {_EXPORT_AGAIN}")
    if re.match(rb"\x80[\x02-\x05]", head):
        raise SfsdError(f"{path} in {name} holds pickle data: refused, sfsd never loads pickles")
    suffix = PurePosixPath(path).suffix.lower()
    if suffix == ".parquet" and not (head.startswith(b"PAR1") and tail.endswith(b"PAR1")):
        raise SfsdError(f"{path} in {name} is not a Parquet file: refused")
    if suffix == ".safetensors" and not _safetensors_head(head, expected):
        raise SfsdError(f"{path} in {name} is not a safetensors file: refused")
    if suffix in (".json", ".jsonl") and expected <= MAX_MANIFEST_BYTES:
        text = _read_limited(archive, info, expected)
        lines = text.splitlines() if suffix == ".jsonl" else [text]
        try:
            for line in lines:
                if line.strip():
                    json.loads(line)
        except ValueError as exc:
            raise SfsdError(f"{path} in {name} is not valid JSON: refused") from exc


def _safetensors_head(head: bytes, size: int) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then '{'."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def _check_runs(archive: zipfile.ZipFile, plan: _Plan, name: str) -> None:
    """Each run folder holds the config of exactly that run; models belong to runs of the archive."""
    if not plan.runs:
        raise SfsdError(f"{name} holds no run: {_EXPORT_AGAIN}")
    if sorted(plan.runs) != sorted(plan.manifest.get("runs") or []):
        raise SfsdError(f"the runs in {name} are not the runs its manifest lists: {_EXPORT_AGAIN}")
    for run_id, files in plan.runs.items():
        if CONFIG not in files:
            raise SfsdError(f"run {run_id} in {name} has no {CONFIG}: {_EXPORT_AGAIN}")
        config = json.loads(archive.read(files[CONFIG]))
        if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
            version = config.get("format_version") if isinstance(config, dict) else None
            raise SfsdError(f"run {run_id} in {name} has run format {version!r}; this sfsd reads format "
                            f"{FORMAT_VERSION}: update sfsd on one side and export again")
        if run_id_for(config) != run_id:
            raise SfsdError(f"run folder {run_id} in {name} does not hold the config of that run: {_EXPORT_AGAIN}")
    for run_id in plan.models:
        if run_id not in plan.runs:
            raise SfsdError(f"{name} holds a model of run {run_id} but not the run: {_EXPORT_AGAIN}")


def _new_items(items: dict[str, dict[str, str]], plan: _Plan, root: Path, what: str,
               ignore: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, str]]:
    """The items not yet under `root`; one present with the same files is skipped, with other files refused."""
    new = {}
    for item_id, files in items.items():
        folder = root / item_id
        if not folder.exists():
            new[item_id] = files
            continue
        wanted = {name: plan.sha[path] for name, path in files.items() if name not in ignore}
        here = {path.name: path for path in folder.iterdir()
                if path.is_file() and not path.name.startswith(".") and path.name not in ignore}
        differing = sorted(set(wanted) ^ set(here)) or sorted(n for n in wanted if file_sha256(here[n]) != wanted[n])
        if differing:
            raise SfsdError(f"{what} {item_id} already exists here with different contents ({differing[0]}): keep "
                            f"it, or delete it first (`sfsd runs delete {item_id}`) and import again")
    return new


def _extract(archive: zipfile.ZipFile, plan: _Plan, files: dict[str, str], final: Path, label: str,
             origin: dict | None = None) -> None:
    """Write one folder through a temporary sibling and a rename, re-checking each checksum as it is written."""
    with disk_guard(label), atomic_dir(final) as tmp:
        for file_name, path in files.items():
            digest = hashlib.sha256()
            with archive.open(path) as source, open(tmp / file_name, "wb") as target:
                for block in iter(lambda: source.read(_CHUNK), b""):  # noqa: B023
                    digest.update(block)
                    target.write(block)
                target.flush()
                os.fsync(target.fileno())
            if digest.hexdigest() != plan.sha[path]:
                raise SfsdError(f"{path} changed while it was imported: import again")
        if origin is not None:
            write_json(tmp / IMPORTED, origin)


# ---- where an imported run comes from -------------------------------------------------------------------


def _origin(manifest: dict, archive_name: str) -> dict:
    return {"computed_on": manifest["host"], "exported_at": manifest["created"],
            "exported_with": manifest.get("versions") or {}, "archive": archive_name}


def imported_origin(run: Run) -> dict | None:
    """The run's imported.json (where and when it was computed), or None for a run computed here."""
    try:
        origin = json.loads(run.file(IMPORTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return origin if isinstance(origin, dict) else None


def origin_line(origin: dict | None) -> str:
    """ "imported from HOST on DATE" (the date it was exported there), or "" for a run computed here."""
    if not origin:
        return ""
    when = str(origin.get("exported_at") or "?")
    try:
        when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        pass
    return f"imported from {origin.get('computed_on') or '?'} on {when}"

