"""Package of the RegistryTask platform (see ARCHITECTURE.md)."""
