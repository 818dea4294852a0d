"""Image datasets: loading folders, MNIST acquisition, dataset artifacts (filled in by the data work)."""
