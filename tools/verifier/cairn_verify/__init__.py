"""Independent verification of a Cairn feed against its writer's signed checkpoint."""
