# The sklearn job through the Open Inference Protocol: POST /v2/models/sklearn/infer, one FP32 row.
ROUTE=/v2/models/sklearn/infer BODY=
case $SCENARIO in
  sklearn) BODY='{"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}' ;;
esac
