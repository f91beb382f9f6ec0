"""LLM serving: ferry's own engine loop that batches per decoding step, and the OpenAI API's shapes.

- ``params``: what a generation request asks for (``SamplingParams``) and what each step yields (``Step``).
- ``sampling``: one sequence's next token from its logits (temperature, top-k/p, min-p, penalties, seed).
- ``text``: token ids to text without splitting a UTF-8 character; stop strings caught across tokens.
- ``grammar``: ``response_format`` (a JSON schema, or any JSON object) as a mask on each step's tokens (llguidance).
- ``model``: a Hugging Face folder or a GGUF file loaded with transformers, on the device and dtype it runs.
- ``budget``: how many tokens of KV cache the engine may hold; ``blocks``: the KV blocks and the prefix cache.
- ``scheduler``: which tokens each step computes (decodes first, prefill in chunks, preemption).
- ``paged``: one packed forward pass over the paged KV cache.
- ``packed``: the linear layers on MKL's packed weights for full decoding steps (float32 on a CPU).
- ``loop``: the engine loop thread that owns the running sequences of one loaded version.
- ``openai_api``: OpenAI request bodies checked and turned into generation requests, with ``openai_fields`` (one
  field's check, the errors naming it) and ``openai_messages`` (chat messages to role and text).
- ``openai_answers``: OpenAI's answers, stream chunks, model cards and embeddings lists built.

Nothing here knows HTTP: the OpenAI routes (``rest/openai.py``) and the data plane call in.
"""
