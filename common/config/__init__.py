"""Configuration: strict keys (:mod:`.keys`), the OmegaConf resolvers the yaml files use (:mod:`.resolvers`),
validation before any expensive work (:mod:`.validate`) and composition / task-group selection (:mod:`.compose`)."""
