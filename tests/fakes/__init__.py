"""Local fakes of provider APIs that speak their protocol (one module per provider)."""
