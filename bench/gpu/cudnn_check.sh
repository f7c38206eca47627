#!/usr/bin/env bash
# GPU call 3 (right after stage_a.sh and stage_b.sh, carrying .stage/c): does PyTorch's cuDNN attention
# slow decoding?
# The same `beagle bench` (SmolLM2 + the shipped drafts, MT-Bench, greedy, 128 new tokens, AR / Beagle /
# EAGLE-2 interleaved per prompt) twice: with Beagle's default (cuDNN SDPA off) and with --cudnn-sdp (on).
# Outputs: $OUT/cudnn/{off,on}/results.{json,md} and $OUT/cudnn.log.
set -uo pipefail
bash bench/gpu/stage_c.sh || exit 3
export BEAGLE_CACHE=/tmp/beagle-cache PYTHONPATH=src PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-60} TOKENS=${TOKENS:-128}
mkdir -p "$OUT/cudnn"
for setting in off on; do
    flag=(); [ "$setting" = on ] && flag=(--cudnn-sdp)
    echo "== cuDNN attention $setting $(date -u +%H:%M:%S)"
    python3 -m beagle.cli.main bench --target smollm2 --draft smollm2-beagle --draft-name beagle \
        --draft smollm2-eagle2 --draft-name eagle2 --methods ar,beagle,eagle2 --prompts mt-bench --limit 80 \
        --max-new-tokens "$TOKENS" --time-budget "$BUDGET" --no-progress --no-plots "${flag[@]}" \
        --out "$OUT/cudnn/$setting"
done 2>&1 | tee "$OUT/cudnn.log"
