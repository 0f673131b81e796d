"""`python -m inferenceservices.planner` = `kembed-plan`."""

from inferenceservices.planner.cli import main

if __name__ == "__main__":
    main()
