"""Model merging (`mtjax merge`): task arithmetic, TIES, DARE, Model Breadcrumbs and LiNeS over
a base and finetuned checkpoints (`methods`: the definitions; `load`: mtjax runs, model dirs and
HF dirs onto a mesh, LoRA merged first; `command`: the CLI). See docs/merge.md."""
