"""Parameter-efficient finetuning: soft prompts (`prompts`), trainable-parameter filters (`filters`); LoRA not built yet."""
