"""After install: the running mirror's state, the plans of check, repair, replace, add and entries,
the member file comparison, and the record apply leaves for them.
"""
