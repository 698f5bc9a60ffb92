"""The seed's proto and the code ``make proto`` generates from it (generated: do not edit)."""
