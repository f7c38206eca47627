#!/usr/bin/env bash
# GPU call 5 (right after retrain.sh, while the machine is warm): the retrained drafts ($DRAFTS, written by
# retrain.sh) against the shipped ones and our AR decoding on SmolLM2-135M-Instruct, bf16, 128 new tokens, the
# default GPU tree (depth 5, top-k 10, 60 tokens), every method interleaved per prompt. MT-Bench T=0 on the
# compiled fast path; HumanEval and held-out ShareGPT at T=0 and MT-Bench at T=1 on the fast path with CUDA
# graphs only (--no-compile: no compilation per process; τ and the ratios to AR on that same path).
# Then the draft vocabulary on the GPU fast path (issue #13: no slower than the full head): vocabularies of
# VOCAB_SIZES tokens counted over the target's regenerated training answers ($FEATURES, ablations.sh), plus the
# shipped 8192-token one (ShareGPT's answers), applied training-free to both retrained drafts, against their
# full heads on MT-Bench T=0 (--no-compile); each vocabulary's coverage report in $RESULTS/vocab/.
# Outputs: $OUT/bench.tar.gz (one folder per run: results.json, results.md, PNGs) and $OUT/bench.log.
#
# CPU smoke test: OUT=/tmp/out DRAFTS=<folder with smollm2-beagle, smollm2-eagle2> BEAGLE_CACHE=~/.cache/beagle \
#     TOKENS=8 BUDGET=1 LIMIT=2 bash bench/gpu/bench_drafts.sh
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
DRAFTS=${DRAFTS:-/tmp/beagle-ablations/final-bf16} RESULTS=${RESULTS:-/tmp/beagle-bench-drafts}
TOKENS=${TOKENS:-128} LIMIT=${LIMIT:-80} VOCAB_SIZES=${VOCAB_SIZES:-32768 16384 8192 4096 2048}
FEATURES=${FEATURES:-/tmp/beagle-ablations/features/regen-train-all}
mkdir -p "$RESULTS" "$OUT"
if [ ! -f "$DRAFTS/smollm2-beagle/model.safetensors" ] || [ ! -f "$DRAFTS/smollm2-eagle2/model.safetensors" ]; then
    echo "no retrained drafts in $DRAFTS (run retrain.sh first, in a call right before this one)" >&2
    exit 3
fi
readarray -t vocab_names < <(python3 bench/gpu/vocab_drafts.py "$FEATURES" "$RESULTS/vocab" "$DRAFTS/smollm2-beagle" \
    "$DRAFTS/smollm2-eagle2" --sizes $VOCAB_SIZES)
[ "${#vocab_names[@]}" -gt 0 ] || { echo "no vocabulary drafts (bench/gpu/vocab_drafts.py failed)" >&2; exit 4; }
vocab_drafts=(--draft "$DRAFTS/smollm2-beagle" --draft-name beagle --draft "$DRAFTS/smollm2-eagle2" --draft-name eagle2)
vocab_methods=ar,beagle,eagle2
for name in "${vocab_names[@]}"; do
    vocab_drafts+=(--draft "$RESULTS/vocab/$name" --draft-name "$name")
    vocab_methods+=",$name"
done
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
    bench t0-mt-bench-vocab ${VOCAB_BUDGET:-80} --prompts mt-bench --limit "$LIMIT" --temperature 0 --no-compile \
        "${vocab_drafts[@]}" --methods "$vocab_methods"
} 2>&1 | tee "$OUT/bench.log"
tar -czf "$OUT/bench.tar.gz" -C "$RESULTS" --exclude='vocab/*-v*' .
ls -la "$OUT"
