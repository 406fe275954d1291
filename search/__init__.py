"""nasdeploy search: space, genotype, builder, strategies."""
