"""CLI command groups, one module per lens (imported only by ``trainmap.cli``)."""
