"""mtjax: a JAX-native trainer for multi-task prompted finetuning and ProMoT."""

__version__ = "0.1.0"
