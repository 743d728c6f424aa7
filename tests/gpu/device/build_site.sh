#!/bin/bash
# Build what the GPU tier needs on a CUDA machine whose python3 (3.12) already has torch with CUDA
# but not Ray: Ray 2.60 and rayfin's other dependencies for CPython 3.12, less what that image
# holds (numpy, pandas, pytest, uvloop) and what the tier never imports (Ray's Java jars, RLlib,
# Data, LLM), packed as .gpu/site.tar.xz (about 55 MB). Needs pip to reach an index. Then, on
# the GPU machine: `bash tests/gpu/device/run.sh` from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../../.."
site=$(mktemp -d)
plat=()
for p in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do plat+=(--platform "$p"); done
.venv/bin/python -m pip install -q --target "$site" --python-version 3.12 --implementation cp "${plat[@]}" \
  --only-binary=:all: "ray[default,serve]==2.60.0" "pydantic>=2.6,<3" "opentelemetry-sdk>=1.20" \
  "opentelemetry-exporter-otlp-proto-http>=1.20" fastapi httpx "psycopg[binary,pool]>=3.2,<4" \
  "cloudpickle>=3,<4" "exchange_calendars>=4.5,<5" PyYAML pytest-timeout
(cd "$site" && rm -rf numpy numpy.libs numpy-* pandas pandas-* pygments pygments-* _pytest pytest pytest-* \
   py.py pluggy pluggy-* iniconfig iniconfig-* bin ray/jars ray/rllib ray/data ray/llm uvloop uvloop-* &&
 find . -name __pycache__ -type d -prune -exec rm -rf {} +)
mkdir -p .gpu
tar -C "$site" -cf - . | xz -9 -T2 > .gpu/site.tar.xz
rm -rf "$site"
ls -la .gpu/site.tar.xz
