"""Protocol-agnostic core: topology, pools, balancing, health, routing. Imports no protocol."""
