#!/usr/bin/env bash
# table.sh [SECONDS]: the peers table in one run: the HTTP floor, Triton, MLServer, LitServe, ferry as a
# newcomer runs it (plain `ferry serve`: `--workers auto`), with one worker (`ferry-1worker/`), tuned (the sklearn
# model also compiled to ONNX, `ferry-compiled/`; the int8 MiniLM from quantize.sh, both `--workers 2`), each on
# both jobs (run_all.sh), then the in-process
# limits (inproc.py); prints the table in markdown and the ratios.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}
source "$here/lib.sh"
peers_env
for peer in floor triton mlserver litserve; do bash "$peers/$peer/setup.sh" >/dev/null; done
bash "$here/ferry/setup.sh"
peers_scripts inproc.py
[[ -f $home/models/minilm-int8/model.int8.onnx ]] || HF_HUB_OFFLINE=1 "$venv/bin/ferry" model convert \
  --hf "$home/models/minilm" --task text-classification --output "$home/models/minilm-int8/model.onnx" \
  --quantize int8 --min-agreement 0 >/dev/null 2>&1
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  $(cpu)  ferry $(git -C "$here/.." rev-parse --short HEAD)$(git -C "$here/.." diff --quiet HEAD || echo '+dirty')  ${secs}s  load $(cut -d' ' -f1-3 /proc/loadavg)"
raw=$("$peers/run_all.sh" "$secs" "$peers/floor" "$peers/triton" "$peers/mlserver" "$peers/litserve" \
  "$here/ferry-default" "$here/ferry-1worker" "$here/ferry-compiled" "$here/ferry-int8")
echo "$raw"
limits=$(PEERS_HOME=$home "$venv/bin/python" "$scripts/inproc.py" "$secs")
echo "$limits"
awk -v limits="$limits" '
  NR > 1 && $3 != "-" { rps[$1, $2] = $3; p99[$1, $2] = $6 }
  function cell(peer, job) { return ((peer, job) in rps) ? sprintf("%d (%.1f)", rps[peer, job], p99[peer, job]) : "" }
  END {
    n = split(limits, lines, "\n"); best = 0
    for (i = 1; i <= n; i++) {
      m = split(lines[i], f, " ")
      for (j = 1; j <= m; j++) if (f[j] == "seq/s" && f[j-1] + 0 > best) best = f[j-1] + 0
      if (lines[i] ~ /^sklearn predict/) for (j = 1; j <= m; j++) if (f[j] == "calls/s") calls = f[j-1]
    }
    split("floor triton mlserver litserve ferry-default ferry-1worker ferry-compiled ferry-int8", order, " ")
    names["floor"] = "HTTP floor"; names["ferry-default"] = "ferry `serve` (no flags: `--workers auto`)"
    names["ferry-1worker"] = "ferry `serve --workers 1`"; names["ferry-compiled"] = "ferry `--workers 2`, `compile=onnx`"; names["ferry-int8"] = "ferry, int8 MiniLM (`model convert --quantize int8`)"
    print ""; print "| peer | sklearn req/s (p99 ms) | minilm req/s (p99 ms) |"; print "| --- | --- | --- |"
    for (i = 1; i <= 8; i++) { p = order[i]; printf "| %s | %s | %s |\n", (p in names) ? names[p] : p, cell(p, "sklearn"), cell(p, "minilm") }
    printf "| in-process limit | %s predict calls/s per core | %d seq/s (best batch) |\n", calls, best
    print ""
    t = rps["triton", "sklearn"]; d = rps["ferry-default", "sklearn"]; w = rps["ferry-1worker", "sklearn"]; c = rps["ferry-compiled", "sklearn"]
    if (t > 0) printf "sklearn: ferry default / Triton = %.2fx, --workers 1 / Triton = %.2fx, --workers 2 compile=onnx / Triton = %.2fx\n", d / t, w / t, c / t
    if (best > 0) printf "minilm: ferry default = %.0f%% of the in-process limit, --workers 1 = %.0f%%\n", 100 * rps["ferry-default", "minilm"] / best, 100 * rps["ferry-1worker", "minilm"] / best
    if (rps["ferry-default", "minilm"] > 0 && rps["triton", "minilm"] > 0) printf "minilm: int8 (--workers 2) / fp32 default = %.2fx, int8 / Triton fp32 = %.2fx\n", rps["ferry-int8", "minilm"] / rps["ferry-default", "minilm"], rps["ferry-int8", "minilm"] / rps["triton", "minilm"]
  }' <<<"$raw"
