"""Integrations with other training frameworks.

Each submodule is optional and imported explicitly (``import ddr_restore.integrations.basicsr``); importing this
package imports none of them, so ``ddr_restore`` never needs the other framework installed.
"""
