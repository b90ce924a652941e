"""The Shoal control plane: ModelService spec, builders, kopf handlers, autoscaler."""
