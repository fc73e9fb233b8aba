"""Pretraining: distributed init, shard loader, optimizer and schedule, step loop, checkpoints."""
