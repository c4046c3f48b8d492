"""Scheduling policies: which queued sequences form the next batch, and which outrank running work.

One small class each (`protocol.SchedulingPolicy`, most of it derived by `base.QueuePolicy` from
the queues a policy declares) and one YAML file in conf/policy/; the same
`QLLMEngine` runs them all.
"""
