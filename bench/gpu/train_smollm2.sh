#!/usr/bin/env bash
# GPU call 3 (after stage_c.sh, same command): train a Beagle and an EAGLE-2 draft for SmolLM2-135M-Instruct
# on equal terms, side by side on one GPU (two processes; the GPU has room for both).
#
# Equal terms: the same 6000 ShareGPT training conversations (the held-out 500 excluded), rendered with
# SmolLM2's chat template, --max-length 1024, global batch 16, the same total epochs (Beagle: EPOCHS1 of
# stage 1 + EPOCHS2 of stage 2; EAGLE-2: EPOCHS1 + EPOCHS2 of its own objective), lr LR after WARMUP
# linear warm-up steps (the paper's 3e-5 / 2000 warm-up is for 20 epochs of 68k conversations; this
# budget is ~2k steps), AdamW(0.9, 0.95), clip 0.5, seed 0, online target features (bf16 target).
# No --regenerate: the device-time budget (30 min per session) does not cover generating 6000 answers.
#
# Each process has a wall-clock limit (LIMIT seconds); checkpoints are written atomically at the end of
# every epoch, so a run cut by the limit leaves its last complete epoch (the log says which).
# CPU smoke test: OUT=/tmp/out EXTRA="--max-steps 2 --heldout 4" MAXLEN=64 bash bench/gpu/train_smollm2.sh
# Outputs: $OUT/drafts/smollm2-{beagle,eagle2}/{config.json,model.safetensors} (bf16; also kept in
# $WORK/bf16 for bench_smollm2.sh while the machine stays warm) and $OUT/train_*.log.
set -uo pipefail
export BEAGLE_CACHE=${BEAGLE_CACHE:-/tmp/beagle-cache} PYTHONPATH=src PYTHONUNBUFFERED=1
EPOCHS1=${EPOCHS1:-3} EPOCHS2=${EPOCHS2:-2} LR=${LR:-5e-4} WARMUP=${WARMUP:-100} LIMIT=${LIMIT:-480}
MAXLEN=${MAXLEN:-1024} WORK=${WORK:-/tmp/beagle-train}
mkdir -p "$WORK" "$OUT"
common=(--target smollm2 --data sharegpt --max-length "$MAXLEN" --batch-size 16 --lr "$LR" --warmup "$WARMUP"
        --epochs-stage1 "$EPOCHS1" --epochs-stage2 "$EPOCHS2" --seed 0 ${EXTRA:-})
start=$(date +%s)
timeout "$LIMIT" python3 -m beagle.cli.main train "${common[@]}" --arch beagle --out "$WORK/beagle" \
    > "$OUT/train_beagle.log" 2>&1 &
beagle_pid=$!
timeout "$LIMIT" python3 -m beagle.cli.main train "${common[@]}" --arch eagle2 --out "$WORK/eagle2" \
    > "$OUT/train_eagle2.log" 2>&1 &
eagle_pid=$!
wait $beagle_pid; echo "beagle training exit $? after $(( $(date +%s) - start )) s"
wait $eagle_pid; echo "eagle2 training exit $? after $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
python3 - "$WORK" "$WORK/bf16" <<'PY'
import json, sys
from pathlib import Path

import torch

from beagle.models.checkpoint import load_draft, save_draft
from beagle.target_model.model import load_target

work, out = Path(sys.argv[1]), Path(sys.argv[2])
target = load_target("smollm2", dtype="bfloat16", device="cpu")
for arch in ("beagle", "eagle2"):
    source = work / arch
    if not (source / "config.json").exists():
        print(f"{arch}: no checkpoint")
        continue
    extra = json.loads((source / "config.json").read_text()).get("training", {})
    draft = load_draft(source, target, dtype=torch.float32)
    save_draft(draft, out / f"smollm2-{arch}", dtype=torch.bfloat16)
    last = (extra.get("eval") or {})
    print(f"{arch}: epochs {extra.get('epochs_done')} step {extra.get('step')} tau {last.get('tau')} "
          f"acceptance {last.get('acceptance')}")
PY
mkdir -p "$OUT/drafts" && cp -r "$WORK"/bf16/* "$OUT/drafts/" 2>/dev/null
ls -la "$OUT" "$OUT/drafts"/* 2>/dev/null
