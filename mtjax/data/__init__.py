"""Data: SeqIO bridge and cache (TF), Grain pipeline, packing and feature conversion (TF-free)."""
