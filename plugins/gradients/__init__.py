"""Built-in gradients."""
