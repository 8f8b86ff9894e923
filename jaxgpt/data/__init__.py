"""Token data: corpora read (text, sources, the embedded shakespeare), tokenized into a cache (cache) or
shards (shards), opened as the dataset a run reads (dataset), and batched (windows)."""
