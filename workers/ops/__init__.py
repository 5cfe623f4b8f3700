"""Operating the stack: the `athena-inference` command, the stack runner and its demo,
provisioning and model downloads, the process command lines, and the Prometheus exporter."""
