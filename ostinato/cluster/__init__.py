"""A node of a controller or director cluster: its configuration and flags (config), its life
between passive and active around the replicated journal (node), the cluster service every node
serves (servicer) and serving it all (serve)."""
