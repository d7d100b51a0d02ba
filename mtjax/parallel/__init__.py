"""mtjax.parallel."""
