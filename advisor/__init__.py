"""The advisor: batch/KV advice, adapters per GPU, placement over GPUs."""
