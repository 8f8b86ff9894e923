"""Training: the engine loop (engine), pretraining on it (pretrain), the pure steps (steps), the optimizer
(optim) and the mesh and shardings (sharding)."""
