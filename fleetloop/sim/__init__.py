"""The embedded default: a simulated fleet and a simulated labeling team (used by the demo and tests, never by the loop's steps)."""
