"""kembed's InferenceService manifests (kustomize base + overlays, monitoring) and the rollout tool."""
