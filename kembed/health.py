"""Liveness and readiness that fail when the server has no model to serve.

kserve answers both with 200 whatever its registry holds: after an unload (or if no model was
ever registered) every request 404s while Kubernetes sees a healthy pod and never restarts it.
"""

from __future__ import annotations

from kserve.protocol.dataplane import DataPlane


class ServingHealth(DataPlane):
    """A DataPlane whose health says whether every registered model is ready (and one is)."""

    def serving(self) -> bool:
        models = self.model_registry.get_models()
        return bool(models) and all(getattr(model, "ready", False) for model in models.values())

    async def live(self) -> dict[str, str]:  # type: ignore[override]
        """kserve's V2 REST route answers a status other than "alive" with 503, its gRPC route
        with `live: false`."""
        return {"status": "alive" if self.serving() else "no model is ready"}

    async def ready(self) -> bool:
        return self.serving() and await super().ready()
