"""The ground floor: the fleet contract every process shares (no Django).

Addresses, node states and ids, Redis key and Channels names, heartbeat records with the one
freshness rule, and the daemons' admin endpoint. Every other package imports from here; this
package imports from none of them (enforced by import-linter in ``./dev lint``).
"""
