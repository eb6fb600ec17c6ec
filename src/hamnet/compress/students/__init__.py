"""Students of the user's own architecture (width/depth multipliers of any module)."""
