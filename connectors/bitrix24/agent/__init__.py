"""The restore agent uploaded to the box host (one stdlib-only file, run there as a script).

It sits in a folder of its own because a script's folder comes first on ``sys.path``: beside the
package's ``platform.py`` it would import that instead of the standard library's ``platform``.
"""
