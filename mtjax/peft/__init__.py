"""Parameter-efficient finetuning: soft prompts, LoRA, trainable-parameter filters (not built yet)."""
