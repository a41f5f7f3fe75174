"""Evaluation: metrics (:mod:`.metrics`), exact posteriors of Gaussian priors (:mod:`.exact_posterior`), uncertainty
statistics and per-image posterior maps (:mod:`.uncertainty`, :mod:`.posterior_maps`), summaries (:mod:`.summary`),
finishing a run folder (:mod:`.finish`), figures and report pages (:mod:`.figures`, :mod:`.report_page`) and tables
(:mod:`.tables`)."""
