"""Data: datasets by name (:mod:`.datasets`), safe inspection of input files (:mod:`.files`), named image lists with
checksums (:mod:`.id_lists`) and operator-state files (masks, kernels: :mod:`.operator_state`)."""
