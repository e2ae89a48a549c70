"""The twin: a step-level simulator of a vLLM V1 engine serving LoRA adapters."""
