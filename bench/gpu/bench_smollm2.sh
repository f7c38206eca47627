#!/usr/bin/env bash
# GPU call 3 (right after train_smollm2.sh, while the machine is warm): benchmark the two trained drafts
# against autoregressive decoding, HF generate and HF prompt-lookup decoding on SmolLM2-135M-Instruct, bf16.
#
# Every run interleaves all methods per prompt; --limit picks prompts round-robin over categories and
# --time-budget stops starting new prompts after that many seconds, so each run fits the 10-minute call
# (the results say how many prompts were done). 128 new tokens; default tree (depth 5, top-k 10, 60 tokens).
# Outputs: $OUT/bench.tar.gz (one folder per run: results.json, results.md, PNGs) and $OUT/bench.log.
#
# CPU smoke test: OUT=/tmp/out DRAFTS=/tmp/work_train/bf16 BEAGLE_CACHE=~/.cache/beagle TOKENS=8 BUDGET=1 \
#     bash bench/gpu/bench_smollm2.sh
set -uo pipefail
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
DRAFTS=${DRAFTS:-/tmp/beagle-train/bf16} RESULTS=${RESULTS:-/tmp/beagle-bench}
TOKENS=${TOKENS:-128}
mkdir -p "$RESULTS" "$OUT"
if [ ! -f "$DRAFTS/smollm2-beagle/model.safetensors" ]; then
    echo "no trained drafts in $DRAFTS (the machine was not warm?)" >&2
    exit 3
fi
bench() {  # name budget_seconds args...
    local name=$1 budget=$2; shift 2
    echo "== $name (budget ${budget}s) $(date -u +%H:%M:%S)"
    python3 -m beagle.cli.main bench --target smollm2 \
        --draft "$DRAFTS/smollm2-beagle" --draft-name beagle --draft "$DRAFTS/smollm2-eagle2" --draft-name eagle2 \
        --max-new-tokens "$TOKENS" --time-budget "$budget" --no-progress --out "$RESULTS/$name" "$@"
}
{
    bench t0-mt-bench ${BUDGET:-150} --prompts mt-bench --limit 80 --temperature 0
    bench t0-humaneval ${BUDGET:-100} --prompts humaneval --limit 164 --temperature 0
    bench t0-sharegpt ${BUDGET:-80} --prompts sharegpt-heldout --limit 100 --temperature 0
    bench t1-mt-bench ${BUDGET:-80} --prompts mt-bench --limit 80 --temperature 1 --seed 0 --methods ar,hf,beagle,eagle2
} 2>&1 | tee "$OUT/bench.log"
tar -czf "$OUT/bench.tar.gz" -C "$RESULTS" .
ls -la "$OUT"
