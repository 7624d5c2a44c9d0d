"""Offline runtime bundles (wheelhouses) per profile and provisioning of the on-device runtime."""
