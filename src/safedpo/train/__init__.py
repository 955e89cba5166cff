"""The training engines: one loop (``loop``) and its objectives, the PPO-Lagrangian engine,
score models, and what runs around them (runtime, checkpoints, distributed)."""
