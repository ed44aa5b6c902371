"""Applications: command-line jobs, reports, storage."""
