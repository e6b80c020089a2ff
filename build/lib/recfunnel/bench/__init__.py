"""Benchmarks behind `recfunnel bench`; figures are quoted in the README."""
