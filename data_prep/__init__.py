"""Data preparation: tokenizer training, FineWeb-Edu to packed webdataset shards, shard verification."""
