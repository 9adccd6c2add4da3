"""Step 1 of the loop: importers (KITTI, parquet), validation (GX suites as files), ingest."""
