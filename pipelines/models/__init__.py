"""The pretrained models the programs run: model kits (which model fills each role) and the wrappers that run them."""
