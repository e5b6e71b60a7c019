"""Built-in balancers."""
