"""The training engines (``engines.ENGINES``: name -> runner and settings type): one loop for
preference losses and SFT (``loop``, around ``driver.StepDriver``), the PPO-Lagrangian engine
(``ppo_lagrangian``), score models (``score_models``), and what runs around them (``runtime``,
``checkpoint``, ``distributed``). Importing this package loads no torch."""
