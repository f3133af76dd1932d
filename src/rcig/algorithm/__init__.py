"""RCIG itself, from one outer step down to the maths:

=============  ==============================================================================
outer.py       the outer loop: support init, learning-rate tuning, one outer step (Distiller)
meta.py        one meta-gradient pass: inner solve, direct gradient, H^-1 g, implicit gradient, clip
inner.py       the convexified inner problem, its gradient and H v; the solvers (Adam, CG)
recompute.py   row-wise functions of the support in chunks of rows, recomputed for the backward
optim.py       AdaBelief (the support), Adam (solves, pool), EMA: pure, checkpointable; the model
               pool of base networks theta0 and its training loss
=============  ==============================================================================

The run around it (files, checkpoints, resume, signals) is :mod:`rcig.run`.
"""
