"""Reports of a gate run: the terminal summary (more formats build on the same rows)."""
