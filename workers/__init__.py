"""How the work is done: one seam per external system, plus the commands that run the stack."""
