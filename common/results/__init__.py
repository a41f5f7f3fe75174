"""Run-folder storage: layout, atomic writes, records and locks (:mod:`.run_dir`), resume fingerprints
(:mod:`.fingerprint`), the rules for reusing a folder (:mod:`.reuse`) and provenance files (:mod:`.provenance`).
Storage only: nothing here computes metrics or draws figures (that is :mod:`common.evaluation`)."""
