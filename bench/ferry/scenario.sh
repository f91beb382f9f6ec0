# Sourced by run_all.sh with SCENARIO set: sets ROUTE and BODY (empty BODY = scenario skipped).
ROUTE=/serve/sklearn BODY=
case $SCENARIO in
  sklearn) BODY='{"x0": 1.0, "x1": 2.0}' ;;
  minilm) ROUTE=/serve/minilm BODY='{"text": "what a great movie"}' ;;
esac
