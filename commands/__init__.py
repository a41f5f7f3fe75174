"""The applications: reproduction scripts (``*.sh``) and the tools users run, ``python -m commands.<tool>``
(accuracy, benchmark, report, protocol). They may import everything; the library (``common``) imports none of them.
"""
