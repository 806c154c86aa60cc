"""The AMQ core: cost model, bit allocation (and, later, quantizers, auxiliary model, QAT loop).

Uses models but never passes or runtimes (DESIGN, "Layout").
"""
