"""Built-in backdoor defenses, one module each; registered through the ``bench.defenses`` group."""
