"""Running a grid: the driver, Ray's and the local executor, isolation, the results store."""
