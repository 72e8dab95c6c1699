"""Shared integrators and generators that load exported artifacts."""
