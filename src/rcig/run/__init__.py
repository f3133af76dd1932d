"""The run driver: ``rcig.distill`` around the algorithm (:mod:`rcig.algorithm`).

=============  ==============================================================================
driver.py      ``rcig.distill``: resolve the run, start or resume its state, the loop
folder.py      the run folder: its files, the checks before a resume, its lock
checkpoint.py  atomic, code-free checkpoints of a run's whole state
interrupts.py  SIGINT, SIGTERM, SIGHUP, SIGUSR1: finish the iteration, checkpoint, stop
=============  ==============================================================================
"""
