"""The library: one package per concern (config, data, operators, models, sampling, results, evaluation, run) and the
few modules everything uses (errors, registry, random).

House rules: ``common`` never imports a sampler package (``daps``, ``dps``, ``baselines``) nor ``commands``; storage
(``results``) never imports ``evaluation``; ``evaluation`` never imports ``run``.
"""
