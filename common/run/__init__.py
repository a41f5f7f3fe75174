"""Running experiments: the command-line policy and exit codes (:mod:`.cli`), one job from config to finished folder
(:mod:`.job`), the experiment loop (:mod:`.experiment`), ranks (:mod:`.distributed`), CPU threads (:mod:`.threads`),
progress (:mod:`.progress`), W&B tracking (:mod:`.tracking`) and sweep bookkeeping (:mod:`.sweep`)."""
