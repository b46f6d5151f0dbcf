"""The engine: dataset preparation, LoRA training, generation and evaluation.

A library with no service code: nothing under ``loramill.engine`` imports from ``loramill.jobs``,
``loramill.adapters`` or ``loramill.gateway``. The CLI and the worker both call into it.
"""
