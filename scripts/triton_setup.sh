#!/usr/bin/env bash
# triton_setup.sh: a real NVIDIA Triton server for the tests and benchmarks, on CPU. Idempotent; prints the
# folder it set up. The nvidia-pytriton wheel carries a tritonserver binary with the Python backend only.
#   $FERRY_TRITON_HOME (default ~/.cache/ferry/triton):
#     venv/    nvidia-pytriton: bin/tritonserver and backends/ under site-packages/pytriton/tritonserver
#     pylib/   what a Python-backend model.py imports (numpy<2, onnxruntime, tokenizers, scikit-learn,
#              joblib), built for Debian's python3, whose libpython the backend stub embeds
# See shared FIELD_NOTES "Triton here" for why each step is needed.
set -euo pipefail
home=${FERRY_TRITON_HOME:-$HOME/.cache/ferry/triton}
venv=$home/venv pylib=$home/pylib
sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"

# The backend stub runs model.py in Debian's libpython (isolated: PYTHONPATH ignored; model.py adds pylib).
[[ -x /usr/bin/python3 ]] || { $sudo_ apt-get update -qq; $sudo_ apt-get install -y -qq python3 >/dev/null; }
pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
dpkg -s "libpython$pyver" >/dev/null 2>&1 || {
  $sudo_ apt-get update -qq; DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "libpython$pyver" >/dev/null; }

mkdir -p "$home"
[[ -x $venv/bin/python ]] || /usr/bin/python3 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
ts=$(echo "$venv"/lib/python3*/site-packages/pytriton/tritonserver)
[[ -x $ts/bin/tritonserver ]] || "$venv/bin/pip" install -q nvidia-pytriton==0.7.0
ts=$(echo "$venv"/lib/python3*/site-packages/pytriton/tritonserver)

# The wheel keeps the stubs aside, one per Python; the backend looks for it in backends/python.
stub=$ts/python_backend_stubs/$pyver/triton_python_backend_stub
cmp -s "$stub" "$ts/backends/python/triton_python_backend_stub" || install -m 755 "$stub" "$ts/backends/python/"

# numpy<2: this backend (Triton 2.51) breaks every output tensor under numpy 2.
if [[ ! -f $pylib/.complete ]]; then
  rm -rf "$pylib"
  "$venv/bin/pip" install -q --target "$pylib" --python-version "$pyver" --only-binary=:all: \
    "numpy<2" onnxruntime tokenizers scikit-learn joblib
  PYTHONPATH=$pylib /usr/bin/python3 -c 'import numpy, onnxruntime, tokenizers, sklearn, joblib'
  touch "$pylib/.complete"
fi
echo "$home"
