"""Parameter-efficient finetuning: soft prompts (`prompts`), LoRA adapters (`lora`), trainable-parameter filters (`filters`)."""
