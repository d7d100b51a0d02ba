"""mtjax.train."""
