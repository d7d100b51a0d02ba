"""mtjax.models."""
