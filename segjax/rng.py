"""The names of the PRNG streams that segjax's flax modules draw from.

Model init, the train step, evaluation with Monte Carlo dropout and
checkpoint averaging's BatchNorm pass name their streams from here, so that
a stream added to a model (e.g. stochastic depth) is added in one place.
"""

PARAMS = 'params'    # Parameter initialisation (model.init only).
DROPOUT = 'dropout'  # nn.Dropout: training, and Monte Carlo dropout at evaluation.

INIT_STREAMS = (PARAMS, DROPOUT)  # The keys of model.init's rngs.
APPLY_STREAMS = (DROPOUT,)        # The keys of model.apply's rngs.
