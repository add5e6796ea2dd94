"""vscan.models.vision"""
