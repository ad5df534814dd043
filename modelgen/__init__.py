"""modelgen: the offline pipeline that turns a dataset into a verified ED-ViT bundle."""

# Part of every stage-cache key: bump when a stage's output for the same inputs changes.
__version__ = "0.1.0"
