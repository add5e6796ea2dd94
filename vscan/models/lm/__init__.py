"""vscan.models.lm"""
