"""One module per verb of the CLI and the Python API; each a short sequence of idmm.builders."""
