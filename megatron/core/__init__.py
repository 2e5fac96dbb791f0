"""Parallel foundations: process groups (parallel_state), collectives (comm) and tensor-parallel layers."""
