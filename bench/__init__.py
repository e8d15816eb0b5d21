"""backdoor-leaderboard: rank backdoor defenses against data-poisoning attacks, reproducibly."""

__version__ = "0.1.0"
