#!/usr/bin/env bash
# Python 3.12 manylinux wheels of what segjax needs beyond what a bare GPU
# machine brings (its own jax/jaxlib, flax, optax, orbax-checkpoint, torch,
# torchvision, timm, numpy, pillow), into the git-ignored .whl/ folder, to be
# carried to the device machine with benchmarks/device_check.sh (64 MiB in all,
# together with the packed CamVid data of benchmarks/pack_camvid.py).
#
#   bash benchmarks/build_device_wheels.sh      # needs network; prints the size
#
# --no-deps: only the packages listed; versions are requirements.txt's (and
# requirements-peers.txt's for the PyTorch peer). device_check.sh installs
# them with `pip install --no-index --no-deps --find-links .whl` and leaves
# anything the machine already has alone.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pin() {  # The pinned version of $1 in the requirements files.
  grep -ih "^$1==" requirements.txt requirements-peers.txt | head -1 ||
    pip freeze 2>/dev/null | grep -i "^$(echo "$1" | sed 's/[-_]/[-_]/g')==" | head -1
}
PKGS=(ml-collections absl-py grain etils clu tensorboardX protobuf tqdm safetensors
      flatbuffers segmentation-models-pytorch huggingface-hub
      array-record cloudpickle portpicker importlib-resources zipp wrapt pyyaml)
for p in "${PKGS[@]}"; do
  spec=$(pin "$p" || true)
  spec=${spec:-$p}
  # Pure-Python packages ship py3-none-any wheels; --platform still accepts them.
  pip download --dest .whl --python-version 3.12 --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --implementation cp --no-deps "$spec"
done
du -sh .whl
ls -la .whl
