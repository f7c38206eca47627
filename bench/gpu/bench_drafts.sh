#!/usr/bin/env bash
# GPU call 5 (right after retrain.sh, while the machine is warm): the retrained drafts ($DRAFTS, written by
# retrain.sh) against the shipped ones and our AR decoding on SmolLM2-135M-Instruct, bf16, 128 new tokens, the
# default GPU tree (depth 5, top-k 10, 60 tokens), every method interleaved per prompt. MT-Bench T=0 on the
# compiled fast path; HumanEval and held-out ShareGPT at T=0 and MT-Bench at T=1 on the fast path with CUDA
# graphs only (--no-compile: no compilation per process; τ and the ratios to AR on that same path).
# Then the retrained Beagle draft with the shipped 8192-token draft vocabulary (training-free) against its full
# head on MT-Bench T=0 (issue #13: on the GPU no slower than the full head).
# Outputs: $OUT/bench.tar.gz (one folder per run: results.json, results.md, PNGs) and $OUT/bench.log.
#
# CPU smoke test: OUT=/tmp/out DRAFTS=<folder with smollm2-beagle, smollm2-eagle2> BEAGLE_CACHE=~/.cache/beagle \
#     TOKENS=8 BUDGET=1 LIMIT=2 bash bench/gpu/bench_drafts.sh
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
DRAFTS=${DRAFTS:-/tmp/beagle-ablations/final-bf16} RESULTS=${RESULTS:-/tmp/beagle-bench-drafts}
TOKENS=${TOKENS:-128} LIMIT=${LIMIT:-80}
mkdir -p "$RESULTS" "$OUT"
if [ ! -f "$DRAFTS/smollm2-beagle/model.safetensors" ] || [ ! -f "$DRAFTS/smollm2-eagle2/model.safetensors" ]; then
    echo "no retrained drafts in $DRAFTS (run retrain.sh first, in a call right before this one)" >&2
    exit 3
fi
python3 -m beagle.cli.main vocab --target smollm2 --vocab drafts/smollm2-vocab-8192.safetensors \
    --draft "$DRAFTS/smollm2-beagle" --out "$RESULTS/beagle-v8192" || exit 4
bench() {  # name budget_seconds args...
    local name=$1 budget=$2; shift 2
    echo "== $name (budget ${budget}s) $(date -u +%H:%M:%S)"
    python3 -m beagle.cli.main bench --target smollm2 --no-noconcat --no-progress --max-new-tokens "$TOKENS" \
        --time-budget "$budget" --out "$RESULTS/$name" "$@"
}
drafts=(--draft "$DRAFTS/smollm2-beagle" --draft-name beagle --draft "$DRAFTS/smollm2-eagle2" --draft-name eagle2
        --draft smollm2-beagle --draft-name beagle-shipped --draft smollm2-eagle2 --draft-name eagle2-shipped)
methods=ar,beagle,eagle2,beagle-shipped,eagle2-shipped
{
    bench t0-mt-bench ${BUDGET:-70} --prompts mt-bench --limit "$LIMIT" --temperature 0 "${drafts[@]}" --methods "$methods"
    bench t0-humaneval ${BUDGET:-35} --prompts humaneval --limit "$LIMIT" --temperature 0 --no-compile "${drafts[@]}" \
        --methods "$methods"
    bench t0-sharegpt ${BUDGET:-35} --prompts sharegpt-heldout --limit "$LIMIT" --temperature 0 --no-compile \
        "${drafts[@]}" --methods "$methods"
    bench t1-mt-bench ${BUDGET:-35} --prompts mt-bench --limit "$LIMIT" --temperature 1 --seed 0 --no-compile \
        "${drafts[@]}" --methods "$methods"
    bench t0-mt-bench-vocab ${BUDGET:-35} --prompts mt-bench --limit "$LIMIT" --temperature 0 --no-compile \
        --draft "$DRAFTS/smollm2-beagle" --draft-name beagle --draft "$RESULTS/beagle-v8192" --draft-name beagle-v8192 \
        --methods ar,beagle,beagle-v8192
} 2>&1 | tee "$OUT/bench.log"
tar -czf "$OUT/bench.tar.gz" -C "$RESULTS" --exclude='beagle-v8192' .
ls -la "$OUT"
