"""FedSkel on Flower: the same strategies, client and wire format as the local simulator, with Flower's
SuperLink / SuperNodes (or its simulation engine) doing transport, scheduling and fleets.

`server_app:app` and `client_app:app` are the components named in pyproject's [tool.flwr.app].
"""
