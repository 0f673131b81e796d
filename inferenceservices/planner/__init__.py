"""`kembed-plan`: measure one predictor pod's capacity curve, derive Knative scale settings from it, and check
them on a traffic trace with a model of Knative's autoscaler (see docs/planning.md)."""
