"""A minimal Kedro project package: the runner's workers configure it to find hooks."""
