#!/usr/bin/env bash
# Aggregate throughput, 1 / 8 / 32 concurrent OpenAI chat clients, vLLM's server vs `beagle serve` on this
# machine (docs/vllm.md). Needs .venv-vllm (bash .ci/vllm builds it). One server at a time.
#   bash bench/vllm/throughput.sh PROMPTS.jsonl OUT.jsonl [CONFIG ...]
# CONFIG: vllm-beagle vllm-eagle2 vllm-plain beagle-serve beagle-serve-plain (default: all but the plain ones)
set -euo pipefail
cd "$(dirname "$0")/../.."
PROMPTS="$1"; OUT="$2"; shift 2
CONFIGS=("$@"); [ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(vllm-beagle vllm-eagle2 beagle-serve)
VENV="${BEAGLE_VLLM_VENV:-.venv-vllm}"
PY="$VENV/bin/python"
export LD_PRELOAD="$(cd "$VENV/lib" && pwd)/libiomp5.so" VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
TARGET="$("$PY" -c 'from beagle.assets.registry import fetch_asset; print(fetch_asset("smollm2"))')"
EXPORTS="$(mktemp -d)"
PORT=8765
CLIENTS="${CLIENTS:-1 8 32}"
MAX_TOKENS="${MAX_TOKENS:-128}"
for arch in beagle eagle2; do "$PY" -m beagle.cli.main export --format vllm "smollm2-$arch" "$EXPORTS/$arch" >/dev/null; done

run() {  # label, command...
    local label="$1"; shift
    echo "+ $label: $*" >&2
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
        echo "port $PORT already serves something; stop it first" >&2; return 1
    fi
    "$@" >"$EXPORTS/$label.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { tail -30 "$EXPORTS/$label.log" >&2; return 1; }
        sleep 2
    done
    "$PY" bench/vllm/bench.py load "$PROMPTS" --url "http://127.0.0.1:$PORT" --label "$label" \
        --clients $CLIENTS --max-tokens "$MAX_TOKENS" --json "$OUT" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true  # $pid is the server itself (vllm_server execs it)
    for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 || break; sleep 1; done
}

vllm_server() {  # draft folder or empty
    local spec=()
    [ -n "$1" ] && spec=(--speculative-config "{\"method\": \"eagle\", \"model\": \"$1\", \"num_speculative_tokens\": 4}")
    # vllm-cpu 0.32.0: `vllm serve` fails on its own version lookup; this module is the same server.
    exec "$PY" -m vllm.entrypoints.openai.api_server --model "$TARGET" --served-model-name smollm2 \
        --host 127.0.0.1 --port "$PORT" --dtype float32 --enforce-eager --max-model-len 2048 \
        --max-num-seqs 32 --seed 0 "${spec[@]}"
}

for config in "${CONFIGS[@]}"; do
    case "$config" in
        vllm-beagle) run "$config" vllm_server "$EXPORTS/beagle" ;;
        vllm-eagle2) run "$config" vllm_server "$EXPORTS/eagle2" ;;
        vllm-plain) run "$config" vllm_server "" ;;
        beagle-serve) run "$config" "$PY" -m beagle.cli.main serve --target smollm2 --draft smollm2-beagle \
                          --port "$PORT" --model-name smollm2 --log-level warning ;;
        beagle-serve-plain) run "$config" "$PY" -m beagle.cli.main serve --target smollm2 --port "$PORT" \
                                --model-name smollm2 --log-level warning ;;
        *) echo "unknown config $config" >&2; exit 2 ;;
    esac
done
rm -rf "$EXPORTS"
