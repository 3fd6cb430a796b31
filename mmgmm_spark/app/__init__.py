"""Layer 5: the application — configuration, the jobs as library functions, CLI, demo, ingest."""
