"""What a candidate is: op names, the genotype and its versioned JSON, the search space
(the decisions a strategy makes), N@F scaling, the model card, and cells as text or a drawing.

May import: ``search.core``. Torch-free; matplotlib only inside ``space.draw`` when drawing.
"""
