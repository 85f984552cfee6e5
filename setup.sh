#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the pinned stack and mmablate itself.
#   bash setup.sh && source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision first and pinned: a looser spec pulls a multi-GB CUDA build of a newer torch.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -c "import torch, torchvision, open_clip, diffusers, peft, trl, snakemake, mmablate; \
print('mmablate env ready: torch', torch.__version__, '| open_clip', open_clip.__version__)"
