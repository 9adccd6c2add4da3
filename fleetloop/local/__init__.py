"""The embedded default's servers (Prefect, Label Studio): one process manager."""
