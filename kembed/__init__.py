"""kembed's shared kernel: what the predictor, the transformer and the eventing service have in common.

The three services are peers: each imports this package, none imports another.
"""
