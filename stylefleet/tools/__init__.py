"""The command line and its tools: run, batch, bench, k8s, config."""
