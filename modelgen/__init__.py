"""modelgen: the offline pipeline that turns a dataset into a verified ED-ViT bundle."""
