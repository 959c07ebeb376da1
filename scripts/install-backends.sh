#!/usr/bin/env bash
# Installs what nexttoken's optional backends need on Debian/Ubuntu, and skips what is there:
#   wgpu: a Vulkan driver (Mesa's lavapipe runs Vulkan on the CPU: mesa-vulkan-drivers);
#   tch:  libtorch 2.9.0, from PyPI's torch==2.9.0, in a virtual environment;
#   hf:   the Hugging Face reference stack of scripts/requirements.txt (torch, transformers) in
#         the same environment, for `cargo xtask speed` and `cargo xtask goldens`;
#   openai: OpenAI's Python client (scripts/requirements-client.txt) in the same environment,
#         for the server's tests.
# Prints the environment to export for building with `--features tch`.
#
#   scripts/install-backends.sh [wgpu] [tch] [hf] [openai]     (no argument: wgpu and tch)
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
    hf | openai)
      if [ "$backend" = hf ]; then
        requirements="$(dirname "$0")/requirements.txt"
      else
        requirements="$(dirname "$0")/requirements-client.txt"
      fi
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
    *)
      echo "unknown target '$backend': expected wgpu, tch, hf or openai" >&2
      exit 2
      ;;
  esac
done
