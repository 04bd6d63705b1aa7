"""One module per CLI command; see :mod:`latentlens.cli` for the contract each module follows."""
