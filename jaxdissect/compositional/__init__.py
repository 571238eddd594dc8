"""Beyond single units: logical formulas of concepts and concepts as directions."""
