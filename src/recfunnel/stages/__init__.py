"""Every funnel stage, one folder per family: ``retrieve`` (and fusion), ``rank``,
``rerank`` (LLM and classical, LLM feature stages), ``explain``; the contract they share
is :mod:`recfunnel.stages.base` and the table of kinds is :mod:`recfunnel.stages.registry`."""
