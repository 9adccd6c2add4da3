"""The labeling bridge: mined frames out to Label Studio, verified labels back (DESIGN.md step 3)."""
