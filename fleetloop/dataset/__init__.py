"""Step 4 of the loop: the DVC-versioned labeled dataset (grow, splits by log, manifest, lineage)."""
