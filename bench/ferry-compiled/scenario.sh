# Sourced with SCENARIO set: the sklearn job only (compile=onnx is for classic models).
[[ $SCENARIO == sklearn ]] && ROUTE=/serve/sklearn BODY='{"x0": 1.0, "x1": 2.0}' || BODY=
