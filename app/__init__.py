"""nasdeploy demo app."""
