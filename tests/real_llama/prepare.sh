#!/usr/bin/env bash
# Prepares the real-llama-server suite: builds (or reuses) llama-server, sets up the Python
# side that writes tiny gpt-oss GGUF models, writes those models, and leaves a manifest that
# the Rust tests read (tests/e2e/real_llama.rs). Uses only apt, PyPI and the crates registry.
#
#   bash tests/real_llama/prepare.sh          # ~16 min the first time on 2 cores, seconds after
#
# Everything lands outside the checkout, keyed by version, so a second run (or a second CI
# run on the same machine) skips the C++ build:
#   $HARMONY_PROXY_TEST_CACHE (default ~/.cache/harmony-proxy)/
#     llama-server-<ver>/bin/llama-server     the server, static, built from the sdist's llama.cpp
#     llama-server-<ver>/src/                 gguf-py + the gpt-oss chat template from the same tree
#     real-llama-venv-<ver>/                  numpy + gguf-py
#     real-llama-models/<sha>.gguf            models, keyed by their script's hash
#     real-llama/manifest.json                what the tests read
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
LLAMA_CPP_PYTHON_VERSION=0.3.36          # carries llama.cpp 0c1e570 of 2026-10-01
cache="${HARMONY_PROXY_TEST_CACHE:-$HOME/.cache/harmony-proxy}"
build_dir="$cache/llama-server-$LLAMA_CPP_PYTHON_VERSION"
server="$build_dir/bin/llama-server"
venv="$cache/real-llama-venv-$LLAMA_CPP_PYTHON_VERSION"
start=$(date +%s)
say() { echo "== real-llama [$(( $(date +%s) - start ))s] $*"; }
mkdir -p "$cache"

# 1. llama-server from the llama.cpp copy vendored in the llama-cpp-python sdist.
if [ ! -x "$server" ] || [ ! -f "$build_dir/src/template.jinja" ]; then
  if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    say "installing cmake and ninja (apt)"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build >/dev/null
    else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build >/dev/null; fi
  fi
  work="$cache/llama-build-$LLAMA_CPP_PYTHON_VERSION.tmp"
  rm -rf "$work" && mkdir -p "$work"
  say "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist (PyPI)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work/sdist"
  tar xzf "$work"/sdist/llama_cpp_python-*.tar.gz -C "$work"
  src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  # The sdist keeps llama.cpp's gitlink file; with it CMake re-runs itself forever under ninja.
  rm -f "$src/.git"
  say "building llama-server (about 16 minutes on 2 cores)"
  cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT=0c1e570 >"$work/cmake.log" 2>&1 \
    || { tail -n 40 "$work/cmake.log"; exit 1; }
  ninja -C "$work/build" -j"$(nproc)" llama-server >"$work/ninja.log" 2>&1 \
    || { tail -n 60 "$work/ninja.log"; exit 1; }
  rm -rf "$build_dir" && mkdir -p "$build_dir/bin" "$build_dir/src"
  cp "$work/build/bin/llama-server" "$server"
  cp -a "$src/gguf-py" "$build_dir/src/gguf-py"
  cp "$src/models/templates/openai-gpt-oss-120b.jinja" "$build_dir/src/template.jinja"
  rm -rf "$work"
  say "llama-server built: $server"
else
  say "reusing $server"
fi
"$server" --version 2>&1 | head -n 2 || true

# 2. The Python side: numpy + llama.cpp's own gguf-py (no torch).
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
  say "python venv with numpy + gguf-py"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy "$build_dir/src/gguf-py"
fi

# 3. The models and the manifest (models are cached by their script's hash).
say "models"
"$venv/bin/python" "$here/models.py" --server "$server" --template "$build_dir/src/template.jinja" \
  --cache "$cache" --version "$LLAMA_CPP_PYTHON_VERSION" --root "$root" ${CI:+--verify}
say "ready: $cache/real-llama/manifest.json"
