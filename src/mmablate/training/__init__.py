"""Training machinery shared by the studies: checkpoints, schedules, threads, logging."""
