"""Pictures: reconstructions (more in later modules)."""
