"""aggregator: validate, align by tick, fuse in numpy, publish results. Never imports torch."""
