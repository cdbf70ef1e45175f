"""kiln's continual-pretraining trainer: reads kiln shards, trains a LLaMA-family model."""
