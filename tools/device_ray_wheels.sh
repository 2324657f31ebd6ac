#!/usr/bin/env bash
# Wheels that let `tools/bench_search.py` run on the lent GPU machine (Python 3.12, no network, 64 MiB
# for the whole working tree): Ray without its Java jars, RLlib and LLM packages (79 MB -> 43 MB; the
# search needs none of them) plus Optuna and the packages the machine's image lacks, into .whlray/
# (add `/.whlray/` to .git/info/exclude). On the machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whlray/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 tools/bench_search.py --device cuda --workers 1,4,16
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whlray
mkdir -p "$out" /tmp/ray-full
pip=".venv/bin/pip"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d /tmp/ray-full "ray==$(version ray)"
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d "$out" \
  "optuna==$(version optuna)" "SQLAlchemy==$(version SQLAlchemy)" "alembic==$(version alembic)" \
  "Mako==$(version Mako)" "colorlog==$(version colorlog)" "jsonschema==$(version jsonschema)" \
  "jsonschema-specifications==$(version jsonschema-specifications)" "referencing==$(version referencing)" \
  rpds-py greenlet "pydantic==$(version pydantic)" "pydantic_core==$(version pydantic_core)" \
  "annotated_types==$(version annotated_types)" "typing_inspection==$(version typing_inspection)"
.venv/bin/python - "$out" /tmp/ray-full/ray-*.whl <<'PY'
import sys, zipfile
from pathlib import Path

out, source = Path(sys.argv[1]), Path(sys.argv[2])
drop = lambda name: name.startswith(("ray/jars/", "ray/rllib/", "ray/llm/")) or name.endswith(".js.map")
with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out / source.name, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        if drop(info.filename):
            continue
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):  # pip checks RECORD: list only what is kept
            data = "".join(line + "\n" for line in data.decode().splitlines() if not drop(line.split(",")[0])).encode()
        zout.writestr(info, data)
print(f"{out / source.name}: {(out / source.name).stat().st_size / 1e6:.1f} MB")
PY
du -sh "$out"
