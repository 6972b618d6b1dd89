"""The unlearner interface, the method registry and configs, and the shared training loop."""
