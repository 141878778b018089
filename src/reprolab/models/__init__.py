"""Model architectures, one module each; see reprolab.registry and reprolab.models._base."""
