"""Model loading: hub ids, local dirs, ``pkg://`` files, GGUF, LoRA adapters; the tiny-model
factory of the demo and the tests."""
