"""Scheduling policies: which sequences form the next batch, and whether to preempt at a checkpoint.

One small class each; the same `QLLMEngine` runs them all. A user adds a policy by writing a class
with the `SchedulingPolicy` methods and a YAML file in conf/engine/.
"""
