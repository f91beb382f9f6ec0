# Sourced by the bench scripts that alternate sides in one run (compare, metrics, triton, v2).
# Expects $peers (the peers folder) and $secs (seconds per measured run).

# run_adapter SCENARIO DIR: one run_all.sh run of the adapter in DIR; prints "req/s p50_ms p99_ms errors".
# Environment given before the call (PEERS_HOME=... run_adapter ...) reaches the adapter.
run_adapter() {
  local line
  line=$(SCENARIOS=$1 "$peers/run_all.sh" "$secs" "$2" | awk -v s="$1" '$2==s')
  [[ $(awk '{print $3}' <<<"$line") =~ ^[0-9.]+$ ]] || { echo "$(basename "$2") ($1) failed: $line" >&2; exit 1; }
  awk '{print $3, $4, $6, $7}' <<<"$line"
}

# median: the median of the numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
