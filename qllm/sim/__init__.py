"""The simulated executor: the real engine's forward passes, timed by a cost model on a virtual clock.

`SimExecutor` (executor.py) yields at the checkpoints the real executor yields at, for the same
batch and granularity; each stage's duration comes from a cost model (cost_model.py: the protocol;
profiled.py, analytic.py), and the clock it advances is the run's virtual clock. No weights, no
tensors, no tokens: the model's shape comes from its Hugging Face modules built on the meta
device (shape.py), routing is drawn (routing.py), KV is accounted (kv.py).
"""
