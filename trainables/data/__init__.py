"""Datasets in the uvlm Parquet layout: the synthetic smart-watch generator and the LLaVA importer."""
