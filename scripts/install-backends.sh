#!/usr/bin/env bash
# Installs what nexttoken's optional backends need on Debian/Ubuntu, and skips what is there:
#   wgpu: a Vulkan driver (Mesa's lavapipe runs Vulkan on the CPU: mesa-vulkan-drivers);
#   tch:  libtorch 2.9.0, from PyPI's torch==2.9.0, in a virtual environment;
#   hf:   the Hugging Face reference stack of scripts/requirements.txt (torch, transformers) in
#         the same environment, for `cargo xtask speed` and `cargo xtask goldens`;
#   openai: OpenAI's Python client (scripts/requirements-client.txt) in the same environment,
#         for the server's tests;
#   web: Debian's chromium and PyPI's Playwright (scripts/requirements-web.txt, in the same
#         environment), for the browser tests of `cargo xtask web --test`;
#   llama-cpp: llama.cpp, the peer for `cargo xtask serve-bench --peer llama.cpp` and
#         `cargo xtask speed`: the sources llama-cpp-python 0.3.36 ships on PyPI (pinned by
#         hash), built with cmake into ~/.cache/nexttoken/llama.cpp (llama-server, llama-bench,
#         llama-batched-bench, llama-quantize, llama-perplexity, llama-completion; about 15
#         minutes on 2 cores), and its convert_hf_to_gguf.py converter, run with the hf
#         environment;
#   llama-cpp-sources: those sources alone, unbuilt (77 MB from PyPI, seconds): the converter
#         and llama.cpp's own GGUF reader (gguf-py), for the tests on files llama.cpp writes.
# Prints the environment to export for building with `--features tch`.
#
#   scripts/install-backends.sh [wgpu] [tch] [hf] [openai] [web] [llama-cpp-sources] [llama-cpp]
#   (no argument: wgpu and tch)
set -euo pipefail

venv="${NEXTTOKEN_VENV:-$HOME/.cache/nexttoken/venv}"
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(wgpu tch)

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

for backend in "${want[@]}"; do
  case "$backend" in
    wgpu | vulkan)
      if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ldconfig -p | grep -q libvulkan.so.1; then
        echo "wgpu: Vulkan loader and lavapipe already installed"
      else
        echo "wgpu: installing mesa-vulkan-drivers (lavapipe) and libvulkan1"
        sudo_if_needed apt-get update -qq
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1
      fi
      ;;
    tch)
      if "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.9.0')" 2>/dev/null; then
        echo "tch: torch 2.9.0 already in $venv"
      else
        echo "tch: installing torch==2.9.0 into $venv (about 6 GB with its CUDA libraries)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.9.0
      fi
      echo "tch: build with: export LIBTORCH_USE_PYTORCH=1 PATH=\"$venv/bin:\$PATH\""
      ;;
    hf | openai | web)
      if [ "$backend" = web ]; then
        if command -v chromium >/dev/null; then
          echo "web: chromium already installed"
        else
          echo "web: installing chromium"
          sudo_if_needed apt-get update -qq
          sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
        fi
      fi
      case "$backend" in
        hf) requirements="$(dirname "$0")/requirements.txt" ;;
        openai) requirements="$(dirname "$0")/requirements-client.txt" ;;
        web) requirements="$(dirname "$0")/requirements-web.txt" ;;
      esac
      if "$venv/bin/python" - "$requirements" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
pins = [line.split("==") for line in open(sys.argv[1]) if "==" in line]
sys.exit(any(version(name) != pinned.strip() for name, pinned in pins))
PY
        echo "$backend: $(basename "$requirements") already satisfied in $venv"
      else
        echo "$backend: installing $requirements into $venv"
        [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
      fi
      ;;
    llama-cpp | llama-cpp-sources)
      llama="${NEXTTOKEN_LLAMA_CPP:-$HOME/.cache/nexttoken/llama.cpp}"
      sdist=llama_cpp_python-0.3.36.tar.gz
      url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$sdist"
      mkdir -p "$llama"
      if [ ! -f "$llama/src/CMakeLists.txt" ]; then
        command -v curl >/dev/null || {
          echo "llama-cpp: installing curl"
          sudo_if_needed apt-get update -qq
          sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates
        }
        echo "llama-cpp: downloading $sdist from PyPI"
        curl -fsSL --retry 3 -o "$llama/$sdist" "$url"
        echo "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  $llama/$sdist" | sha256sum -c --quiet
        rm -rf "$llama/src" "$llama/unpack" && mkdir -p "$llama/unpack"
        tar -xzf "$llama/$sdist" -C "$llama/unpack"
        mv "$llama/unpack/llama_cpp_python-0.3.36/vendor/llama.cpp" "$llama/src"
        rm -f "$llama/src/.git" # a submodule pointer into a repository the sdist does not have
        rm -rf "$llama/unpack" "$llama/$sdist"
      fi
      if [ "$backend" = llama-cpp-sources ]; then
        echo "llama-cpp-sources: llama.cpp's sources in $llama/src"
        continue
      fi
      programs="llama-server llama-bench llama-batched-bench llama-quantize llama-perplexity llama-completion"
      built=yes
      for program in $programs; do [ -x "$llama/build/bin/$program" ] || built=no; done
      if [ "$built" = yes ]; then
        echo "llama-cpp: $programs already built in $llama/build/bin"
        continue
      fi
      command -v cmake >/dev/null || {
        echo "llama-cpp: installing cmake"
        sudo_if_needed apt-get update -qq
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake
      }
      echo "llama-cpp: building $programs (CPU, native) in $llama/build"
      cmake -S "$llama/src" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
      # shellcheck disable=SC2086 # one target per program
      cmake --build "$llama/build" --target $programs -j "$(nproc)" >/dev/null
      echo "llama-cpp: $programs in $llama/build/bin"
      ;;
    *)
      echo "unknown target '$backend': expected wgpu, tch, hf, openai, web, llama-cpp-sources or llama-cpp" >&2
      exit 2
      ;;
  esac
done
