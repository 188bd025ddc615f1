"""`genpi serve`: what was internalized, served to many agents at once.

An OpenAI-compatible router (router.py) on 127.0.0.1 in front of one engine (engines.py): `vllm serve
--enable-lora` with every tenant's adapter on one base, or `transformers serve` with each tenant merged into
its own weights where vLLM is missing. A request's `model` field is a prompt's name; the router maps it to the
adapter of that prompt's promoted version (tenants.py) and swaps versions without dropping a request when a new
one is promoted.
"""
