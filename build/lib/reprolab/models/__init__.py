"""Model architectures, one module each; see reprolab.core.registry and reprolab.models._base."""
