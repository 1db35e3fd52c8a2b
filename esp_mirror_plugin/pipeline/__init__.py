"""From what the user asked to what runs: the request and its settings, the profiles, the layout
decisions and refusals, the frozen steps, the checks before the first step, and the executors
that record steps for ``plan`` or carry them out for ``apply``.
"""
