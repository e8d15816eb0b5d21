"""Built-in backdoor attacks, one module each; registered through the ``bench.attacks`` group."""
