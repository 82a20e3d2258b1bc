"""Generation shared by detox, serving and ``softprompt generate``: rows whose next-token logits
combine (:mod:`~softprompt.generation.rows`), the batched sampler, and soft prompts trained as
language models."""
