"""The lab: a small internet of network namespaces running the edge the way an operator does.

Pure planning (``plan``, ``delay``, ``configs``) is kept apart from the root-only shell
(``netns``, ``components``, ``delayline``, ``__main__``). No server package imports this one.
"""
