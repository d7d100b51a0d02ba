"""mtjax.config."""
