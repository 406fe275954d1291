"""nasdeploy serve: torch-free runtimes for exported models."""
