"""Render: node pictures, the saved folder and the one self-contained HTML page.

Trees are read through their methods only (walk, to_dict, evidence, picture), so the tree
model can offer ``save()`` and notebook display without a cycle.
"""
