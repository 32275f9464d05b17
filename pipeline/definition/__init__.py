"""Reading a compiled pipeline definition (the JSON `upsert` sends and `run` interprets): its expressions
(Get, Std:Join), its parameters and the values given to them, its steps in dependency order, the service
limits it must respect, and the differences between two of them. Pure Python: no SDK, no numpy."""
