"""mtjax.eval."""
