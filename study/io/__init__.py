"""Run locations (local folders or s3:// URIs) and writes that never follow planted symlinks."""
