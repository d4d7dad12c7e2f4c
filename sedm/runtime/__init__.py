"""How sedm's long jobs run: devices, preemption signals, exact resume, and what training loops share.

A cluster job can be killed at any step (SLURM sends SIGTERM, or SIGUSR1 shortly before the time
limit). The training loops and synthesis therefore write their state atomically, store every RNG
state, and on a signal save once more and exit with :data:`~sedm.runtime.signals.EXIT_REQUEUE` so the
scheduler reruns the job, which resumes where it stopped. Saved state carries a fingerprint of the
config and the inputs; state made for other settings or other data is never resumed (a silent mix of
two runs is worse than a restart).

Modules: ``devices`` (device choice, autocast), ``signals`` (stop signals, exit status), ``rng`` (global
RNG state for checkpoints), ``fingerprint`` (what a run's results depend on), ``checkpoints`` (the
rotating checkpoint store both trainers use), ``schedules`` (learning-rate schedules), ``ema`` (weight
averages), ``csvlog`` (training logs that survive resume), ``joblog`` (a job's log file, kept for every failed attempt).
"""
