"""vscan.models.medical"""
