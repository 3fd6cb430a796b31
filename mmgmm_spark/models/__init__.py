"""Layer 2: the estimators users hold (mixture, fusion strategies, detector, score schema)."""
