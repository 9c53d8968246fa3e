"""The tools behind ``examples/``: batched prediction, ``torch.export``, learned-graph plots
and the command-line error handling they share."""
