"""Data plane: request in, result out. No HTTP, no protobuf: plain values in, plain values or ferry errors out.

- ``request/``: one request's way through a loaded service: DataPlane routes it (routes, canaries, shadows)
  to an endpoint version's runtime, which admits it, runs preprocess -> model -> postprocess where the code
  may run (the event loop, the stage pool, the caller's thread) and counts it.
- ``batching/``: the dynamic batcher that turns concurrent model calls into one, and how it pads and splits.
- ``revisions/``: making a revision live: poll the store, build and warm what changed, swap the route table
  in one assignment, drain and unload what left; heartbeats.
- ``usercode/``: the user's ``Preprocess`` package, loaded apart per version, its hooks wrapped once, the
  ``model_endpoint`` view and the ``clearml`` stand-in it may import.
- ``v2.py``: the Open Inference Protocol's (KServe V2) datatypes and signatures, for the REST and gRPC faces.
"""
