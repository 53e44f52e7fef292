"""Training and evaluation: :mod:`.trainer` (the loop), :mod:`.step` (eager and captured steps), :mod:`.cuda`
(speed switches applied from outside), :mod:`.optim`, :mod:`.distributed`, :mod:`.evaluate`, :mod:`.checks`."""
