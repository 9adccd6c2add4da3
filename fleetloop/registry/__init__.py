"""Step 6 of the loop: the model registry (versions, aliases, history) and the promotion gate."""
