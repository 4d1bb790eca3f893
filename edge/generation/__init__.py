"""Beam search on llama.cpp: the generator (``generate``), pure beam bookkeeping (``beam``), several users' searches
in one llama.cpp batch (``beam_batch``), the prompt prefix KV cache (``kvcache``) and the GGUF header reader
(``gguf_header``)."""
