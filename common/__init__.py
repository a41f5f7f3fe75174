"""Shared building blocks of both samplers: operators, models, data, metrics and run outputs.

House rule: nothing in ``common`` imports ``daps`` or ``dps``.
"""
