"""CPU runtime of GLoSS: prompt, catalogue, embedder, index, generator, metrics and bundle contracts.

Nothing in this package imports torch, transformers, peft or bitsandbytes.
"""

__version__ = "0.1.0"
