"""Training on Ray Train: the config (`config`), the driver that checks and starts a run
(`driver`) and the loop every worker runs (`loop`)."""
