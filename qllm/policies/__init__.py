"""Scheduling policies: which queued sequences form the next batch, and which outrank running work.

One small class each (`protocol.SchedulingPolicy`) and one YAML file in conf/policy/; the same
`QLLMEngine` runs them all.
"""
